"""fp32 CPU linears through MKL (`nn.functional.linear`) vs oneDNN (vidcli_kernels.linear).

    python benchmarks/bench_cpu_linear.py --rounds 7
    python benchmarks/bench_cpu_linear.py --threads 1 --rounds 5 --skip-loop

Two tables, each interleaved round-robin in one process after warm-up, medians:
- GEMMs: the demo MMDiT's linear shapes (160 rows = 2 CFG rows x 80 tokens; 2-row modulation)
  and the 11B layout's block shapes at 1,024 tokens, MKL vs oneDNN, with each one's error
  against a float64 product;
- the demo's sampling loop (`phases.sample_latents`, eager), `VIDCLI_CPU_LINEAR=aten` vs
  `onednn`, with the largest latent difference between the two.
Prints one JSON object. `cpu_vendor` and `auto_backend` say what `vidcli generate` picks here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vidcli.timing import median_ratio, time_interleaved, time_once
from vidcli_kernels.linear import BACKEND_ENV, cpu_linear_backend, cpu_vendor

GEMMS = [
    # (label, rows, in, out)
    ("demo q/k/v/proj", 160, 256, 256),
    ("demo single linear1 (v_mlp)", 160, 256, 1280),
    ("demo single linear2", 160, 1280, 256),
    ("demo double mlp fc1", 128, 256, 1024),
    ("demo modulation", 2, 256, 1536),
    ("11B qkv, 1024 tokens", 1024, 3072, 9216),
    ("11B mlp fc1, 1024 tokens", 1024, 3072, 12288),
]


def seconds_per_call(fn: Callable[[], object], min_s: float = 0.05) -> float:
    """Mean seconds of `fn` over enough calls to fill `min_s`."""
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_s or calls < 3:
        fn()
        calls += 1
    return elapsed / calls


def bench_gemms(rounds: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    for label, m, k, n in GEMMS:
        x, w, b = torch.randn(m, k), torch.randn(n, k) / k**0.5, torch.randn(n)
        variants = {
            "aten": lambda x=x, w=w, b=b: F.linear(x, w, b),
            "onednn": lambda x=x, w=w, b=b: torch.ops.mkldnn._linear_pointwise(
                x, w, b, "none", [], ""
            ),
        }
        exact = x.double() @ w.double().T + b.double()
        errors = {
            name: float((fn().double() - exact).norm() / exact.norm())
            for name, fn in variants.items()
        }
        aten, onednn = time_interleaved(
            [lambda fn=fn: seconds_per_call(fn) for fn in variants.values()], repeat=rounds
        )
        rows.append(
            {
                "gemm": label,
                "m_k_n": [m, k, n],
                "aten_us": round(aten.median * 1e6, 1),
                "onednn_us": round(onednn.median * 1e6, 1),
                "speedup": round(median_ratio(aten, onednn), 2),
                "rel_err_aten": errors["aten"],
                "rel_err_onednn": errors["onednn"],
            }
        )
    return rows


def bench_sampling_loop(rounds: int, steps: int) -> dict:
    from vidcli.generate import load_generate_recipe
    from vidcli.sampling.phases import encode_text, sample_latents
    from vidcli.sampling.pipeline import load_pipeline

    recipe = load_generate_recipe(None, None, [f"sample.steps={steps}"])
    sample = recipe.sample
    pipe = load_pipeline(recipe)
    shape = pipe.ae.latent_shape(sample.frames, sample.height, sample.width)
    with torch.no_grad():
        emb, neg = encode_text(pipe, ["a red circle moving right"], [sample.negative_prompt])

    def loop(backend: str) -> torch.Tensor:
        os.environ[BACKEND_ENV] = backend  # read by every eager linear call
        with torch.no_grad():
            return sample_latents(pipe, sample, emb, neg, [0], shape)

    latents = {backend: loop(backend) for backend in ("aten", "onednn")}  # warm-up
    aten, onednn = time_interleaved(
        [lambda backend=backend: time_once(lambda: loop(backend), "cpu") for backend in latents],
        repeat=rounds,
        warmup=0,
    )
    return {
        "steps": steps,
        "aten_s": round(aten.median, 4),
        "onednn_s": round(onednn.median, 4),
        "speedup": round(median_ratio(aten, onednn), 3),
        "max_abs_diff": float((latents["aten"] - latents["onednn"]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per variant")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (the demo's 20)")
    parser.add_argument("--skip-loop", action="store_true", help="GEMMs only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    auto = cpu_linear_backend()
    result = {
        "cpu_vendor": cpu_vendor(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_backend": auto,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rounds": args.rounds,
        "gemms": bench_gemms(args.rounds),
    }
    if not args.skip_loop:
        result["demo_sampling_loop"] = bench_sampling_loop(args.rounds, args.steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
