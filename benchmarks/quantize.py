"""Quantized inference on the bundled demo (CPU by default): how far int8-wo samples from bf16
and fp32, and what one DiT call costs in each.

Videos: the demo prompt sampled at the demo's size and --steps with each of fp32, bf16 and int8-wo
(int8 weights, bf16 compute; `vidcli.quantize`), the same seed; PSNR between the decoded videos
(peak 2: videos in [-1, 1]). Time: one CFG-batched denoiser call (`dit.forward_video`, 2 rows) per
variant, the variants interleaved round by round so load drift hits them alike; median of
--rounds after --warmup rounds.

    python benchmarks/quantize.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from vidcli.generate import load_generate_recipe
from vidcli.placement import Placement
from vidcli.sampling.phases import encode_text, sample_videos
from vidcli.sampling.pipeline import load_pipeline

PROMPT = "a red circle moving right"
VARIANTS = {"fp32": (torch.float32, "none"), "bf16": (torch.bfloat16, "none")}
VARIANTS["int8-wo"] = (torch.bfloat16, "int8-wo")


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    pipes, videos, calls = {}, {}, {}
    for name, (dtype, quantize) in VARIANTS.items():
        recipe = load_generate_recipe(
            None, None, [f"sample.steps={args.steps}", f"sample.quantize={quantize}"]
        )
        pipe = load_pipeline(recipe, Placement(device, dtype), ema=False)
        s = recipe.sample
        size = (s.frames, s.height, s.width)
        videos[name] = sample_videos(pipe, s, [PROMPT], [s.seed], size)
        with torch.no_grad(), pipe.placement.autocast():
            emb, neg = encode_text(pipe, [PROMPT], [""])
        shape = pipe.ae.latent_shape(*size)
        latents = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        tokens = torch.cat([emb.tokens, neg.tokens])
        pooled = torch.cat([emb.pooled, neg.pooled])
        inputs = [t.to(device) for t in (latents, torch.full((2,), 0.5), tokens, pooled)]
        pipes[name], calls[name] = pipe, inputs
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.warmup + args.rounds):
        for name, pipe in pipes.items():
            with torch.inference_mode(), pipe.placement.autocast():
                tick = time.perf_counter()
                pipe.dit.forward_video(*calls[name])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= args.warmup:
                    times[name].append(time.perf_counter() - tick)
    result = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "psnr_db": {
            "int8-wo vs bf16": psnr_db(videos["int8-wo"], videos["bf16"]),
            "int8-wo vs fp32": psnr_db(videos["int8-wo"], videos["fp32"]),
            "bf16 vs fp32": psnr_db(videos["bf16"], videos["fp32"]),
        },
        "ms_per_dit_call": {name: 1e3 * statistics.median(t) for name, t in times.items()},
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result["psnr_db"].items():
            print(f"PSNR {key}: {value:.1f} dB")
        for key, value in result["ms_per_dit_call"].items():
            print(f"{key}: {value:.1f} ms per DiT call")


if __name__ == "__main__":
    main()
