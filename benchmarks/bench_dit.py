"""Time the MMDiT forward and forward+backward for given token counts; report model FLOPs and MFU.

MFU = model FLOPs per second / a *measured* dense-matmul peak of the same device and dtype
(shared/reference/gpu-anchors.md counts against the 989 TFLOP/s H100 spec; a large bf16 matmul
reaches about 790 there, so both are printed when a spec peak is given).

    python benchmarks/bench_dit.py --preset mmdit-s --tokens 1024 --text-tokens 64
    python benchmarks/bench_dit.py --preset opensora-v2-hcae --tokens 18432 --text-tokens 512 \
        --dtype bf16 --device cuda --depth 2 --depth-single 4 --grad-ckpt --spec-peak 989e12
"""

from __future__ import annotations

import argparse
import json

import torch

from vidcli.models.mmdit import MMDiT, build_dit, dit_flops, make_image_ids
from vidcli.timing import measure_matmul_peak, time_call

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_init_(model: MMDiT) -> MMDiT:
    """Weights drawn N(0, 1/fan_in), biases 0, norm scales 1: finite activations in bf16."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
            elif name.endswith(".scale"):
                p.fill_(1.0)
            else:
                p.zero_()
    return model


def build_random_dit(preset: str, device: torch.device, dtype: torch.dtype, **overrides) -> MMDiT:
    """Build on the meta device, then materialise in `dtype` on `device` (no fp32 copy of 11B)."""
    model = build_dit(preset, device="meta", **overrides)
    return random_init_(model.to_empty(device=device).to(dtype))


def dit_inputs(model: MMDiT, batch: int, tokens: int, text_tokens: int, device, dtype):
    c = model.config
    return dict(
        img=torch.randn(batch, tokens, c.in_channels, device=device, dtype=dtype),
        img_ids=make_image_ids(batch, 1, 1, tokens, device=device),
        txt=torch.randn(batch, text_tokens, c.context_in_dim, device=device, dtype=dtype),
        txt_ids=torch.zeros(batch, text_tokens, 3, device=device),
        timesteps=torch.rand(batch, device=device, dtype=dtype),
        y_vec=torch.randn(batch, c.vec_in_dim, device=device, dtype=dtype),
        guidance=torch.full((batch,), 4.0, device=device, dtype=dtype),
    )


def run(args: argparse.Namespace) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    overrides = {}
    if args.depth is not None:
        overrides["depth"] = args.depth
    if args.depth_single is not None:
        overrides["depth_single_blocks"] = args.depth_single
    model = build_random_dit(args.preset, device, dtype, **overrides)
    model.set_gradient_checkpointing(args.grad_ckpt)
    inputs = dit_inputs(model, args.batch, args.tokens, args.text_tokens, device, dtype)

    def forward():
        with torch.no_grad():
            return model(**inputs)

    def train_step():
        model(**inputs).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fwd_s = time_call(forward, device, args.repeat)
    train_s = None if args.forward_only else time_call(train_step, device, args.repeat)
    peak = measure_matmul_peak(device, dtype)

    flops = args.batch * dit_flops(model.config, args.tokens, args.text_tokens)
    result = {
        "preset": args.preset,
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "batch": args.batch,
        "image_tokens": args.tokens,
        "text_tokens": args.text_tokens,
        "grad_ckpt": args.grad_ckpt,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_s": fwd_s,
        "train_step_s": train_s,
        "forward_tflop": flops / 1e12,
        "train_tflop": 3 * flops / 1e12,
        "matmul_peak_tflops": peak / 1e12,
        "forward_mfu": flops / fwd_s / peak,
        "train_mfu": None if train_s is None else 3 * flops / train_s / peak,
    }
    if args.spec_peak:
        result["forward_mfu_spec"] = flops / fwd_s / args.spec_peak
        if train_s is not None:
            result["train_mfu_spec"] = 3 * flops / train_s / args.spec_peak
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mmdit-s", help="DiT preset name")
    parser.add_argument("--tokens", type=int, default=1024, help="image tokens per sample")
    parser.add_argument("--text-tokens", type=int, default=64, help="text tokens per sample")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--depth", type=int, help="override the number of double blocks")
    parser.add_argument("--depth-single", type=int, help="override the number of single blocks")
    parser.add_argument("--grad-ckpt", action="store_true", help="checkpoint every block")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--spec-peak", type=float, help="datasheet FLOP/s, e.g. 989e12 (H100 bf16)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}: {value:.4g}" if isinstance(value, float) else f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
