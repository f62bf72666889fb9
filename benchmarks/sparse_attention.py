"""Time sparse video attention (FlexAttention block masks) against dense SDPA, rows interleaved.

Each row is one (grid, pattern): dense SDPA and the flex path are timed alternately (A B A B ...)
and the median of the per-round ratios is reported, so a neighbouring job cannot flip it. The
flex path is compiled once per shape before timing (compile time reported separately).

    python benchmarks/sparse_attention.py --grid 16x32x32 --text 64 --pattern sta:3x3x3:4x8x8
    python benchmarks/sparse_attention.py --grid 8x16x16 --grid 16x32x32 --pattern window:1x4x4 \
        --device cuda --dtype bf16 --heads 24 --head-dim 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from vidcli.timing import median_ratio, time_interleaved, time_once
from vidcli_kernels import sparse_attention as sa

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_triple(text: str) -> tuple[int, int, int]:
    t, h, w = (int(v) for v in text.split("x"))
    return t, h, w


def parse_pattern(text: str) -> sa.SparsePattern:
    """'sta:3x3x3:4x8x8' (window in tiles, tile), 'window:1x4x4' (radii), 'frame_tile:2'."""
    kind, *args = text.split(":")
    if kind == "sta":
        return sa.SparsePattern("sta", parse_triple(args[0]), parse_triple(args[1]))
    if kind == "window":
        return sa.SparsePattern("window", parse_triple(args[0]))
    if kind == "frame_tile":
        return sa.SparsePattern("frame_tile", global_frames=int(args[0]))
    raise SystemExit(f"--pattern {text}: use sta:WxWxW:TxTxT, window:RxRxR or frame_tile:K")


def measure(grid, text, pattern, args) -> dict:
    layout = sa.VideoLayout(text, *grid)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, args.heads, layout.tokens, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype) for _ in range(3))
    with torch.no_grad():
        start = time.perf_counter()
        sa.sparse_attention(q, k, v, pattern, layout, path="flex")
        compile_s = time.perf_counter() - start
        dense, flex = time_interleaved(
            [
                lambda: time_once(lambda: F.scaled_dot_product_attention(q, k, v), device),
                lambda: time_once(
                    lambda: sa.sparse_attention(q, k, v, pattern, layout, path="flex"), device
                ),
            ],
            repeat=args.repeat,
        )
    choice = sa.choose_path(q, pattern, layout)
    return {
        "grid": "x".join(map(str, grid)),
        "text": text,
        "tokens": layout.tokens,
        "pattern": args_label(pattern),
        "token_sparsity": round(sa.sparsity(pattern, layout), 3),
        "block_sparsity": round(sa.block_sparsity(pattern, layout), 3),
        "dense_ms": round(dense.median * 1e3, 1),
        "flex_ms": round(flex.median * 1e3, 1),
        "speedup": round(median_ratio(dense, flex), 2),
        "compile_s": round(compile_s, 1),
        "dispatcher": f"{choice.path} ({choice.reason})",
    }


def args_label(p: sa.SparsePattern) -> str:
    if p.kind == "sta":
        return f"sta window {p.window} tiles of {p.tile}"
    if p.kind == "window":
        return f"window radius {p.window}"
    return f"frame_tile k={p.global_frames}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", action="append", type=parse_triple, required=True)
    parser.add_argument("--pattern", action="append", type=parse_pattern, required=True)
    parser.add_argument("--text", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for grid in args.grid:
        for pattern in args.pattern:
            row = measure(grid, args.text, pattern, args)
            print(json.dumps(row), file=sys.stderr)
            rows.append(row)
    print("| tokens | pattern | token sparsity | block sparsity | dense ms | flex ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tokens']} ({r['grid']} + {r['text']} text) | {r['pattern']} | "
            f"{r['token_sparsity']:.1%} | {r['block_sparsity']:.1%} | {r['dense_ms']} | "
            f"{r['flex_ms']} | {r['speedup']}x |"
        )


if __name__ == "__main__":
    main()
