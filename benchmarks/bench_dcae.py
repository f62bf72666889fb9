"""Encode/decode throughput of vidcli's DC-AE vs diffusers' AutoencoderDC, same weights and input.

    python benchmarks/bench_dcae.py --size 256 --threads 1 --rounds 5 --dtype float32 \
        [--video] [--compile] [--before REV]

Builds a diffusers AutoencoderDC (random weights), saves it, loads the folder with
`load_autoencoder`, then times both on the same input in one process, interleaved (ours,
diffusers, ours, ... after a warm-up) and reports medians, so the ratio survives a loaded
machine. Prints images/s and the ratio ours/diffusers (> 1 means ours is faster) by wall
clock and by process CPU time (the steadier one at one thread on a shared machine), and each
function's minor page faults per call: memory glibc's allocator gave back to the OS and maps
again, which both sides pay in time and which moves with the other models in the process.
`--video` adds the video DC-AE (the f32t4c128 layout at a quarter of its widths) against its
own fp32 eager path. `--before REV` adds the DC-AE code of git revision REV on the same
weights: a row against diffusers and an "ours vs REV" row. `--compile` adds vidcli's
encoder/decoder under `compile_autoencoder` (inductor, frozen weights) and reports its compile
time separately.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vidcli.models.dcae import AE_PRESETS, DCAE, load_autoencoder
from vidcli.models.dcae.compiled import compile_autoencoder

CONFIGS = {
    # dc-ae-f32c32-sana-1.0's layout at a quarter of its widths (CPU-friendly)
    "sana": {
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
        "encoder_block_out_channels": [32, 64, 128, 128, 256, 256],
        "decoder_block_out_channels": [32, 64, 128, 128, 256, 256],
        "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
        "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
        "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
        "downsample_block_type": "conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    },
}


# Open-Sora's Video DC-AE layout at a quarter of its widths (the same scaling as "sana").
VIDEO_CONFIG = dataclasses.replace(
    AE_PRESETS["dc-ae-f32t4c128"],
    latent_channels=32,
    encoder_widths=(32, 64, 128, 128, 256, 256),
    decoder_widths=(32, 64, 128, 128, 256, 256),
)


def interleaved(
    fns: dict[str, Callable[[], object]], rounds: int
) -> dict[str, tuple[float, float, float]]:
    """Median (wall s, CPU s, minor page faults) of each fn, round-robin after one warm-up each.

    CPU time is this process's (all its threads): on a shared machine it leaves out the time
    other jobs hold the cores, so at one thread it is the steadier measure of the same work.
    Minor page faults count the memory the allocator handed back to the OS and maps afresh
    during the call (glibc trims its heap top between calls): a few microseconds each.
    """
    for fn in fns.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    faults: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {
        k: (statistics.median(wall[k]), statistics.median(cpu[k]), statistics.median(faults[k]))
        for k in fns
    }


def compile_now(fn: Callable, *args) -> float:
    """Seconds of the first call of a compiled fn (tracing + inductor + one run)."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def revision_dcae(rev: str, folder: str) -> type[DCAE]:
    """The DCAE class of `vidcli/models/dcae/{blocks,model}.py` at git revision `rev`.

    Both files are written under `folder` as package `dcae_before` (model.py's import of the
    blocks redirected there), so the old model runs beside the current one on the same weights.
    """
    repo = Path(__file__).resolve().parents[1]
    pkg = Path(folder) / "dcae_before"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("blocks", "model"):
        src = subprocess.run(
            ["git", "show", f"{rev}:vidcli/models/dcae/{name}.py"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        src = src.replace("from vidcli.models.dcae.blocks import", "from dcae_before.blocks import")
        (pkg / f"{name}.py").write_text(src)
    sys.path.insert(0, folder)
    return importlib.import_module("dcae_before.model").DCAE


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def row(name: str, batch: int, ours: tuple[float, float], base: tuple[float, float]) -> str:
    """Throughput by wall clock, then the ratio base/ours by wall clock and by CPU time."""
    return (
        f"{name:26}{batch / ours[0]:12.3f}{batch / base[0]:14.3f}"
        f"{base[0] / ours[0]:8.2f}{base[1] / ours[1]:8.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--config", choices=list(CONFIGS), default="sana")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--video", action="store_true", help="also the video DC-AE")
    parser.add_argument("--frames", type=int, default=4, help="video input frames")
    parser.add_argument("--video-size", type=int, default=64, help="video input height/width")
    parser.add_argument("--compile", action="store_true", help="also ours under torch.compile")
    parser.add_argument(
        "--before", metavar="REV", help="also the DC-AE of git revision REV on the same weights"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    dtype = getattr(torch, args.dtype)
    from diffusers import AutoencoderDC

    torch.manual_seed(0)
    ref = AutoencoderDC(**CONFIGS[args.config]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = load_autoencoder(tmp).to(dtype)
    ref = ref.to(dtype)
    sf = ours.scaling_factor
    x = (torch.rand(args.batch, 3, args.size, args.size) * 2 - 1).to(dtype)
    lines = []
    with torch.inference_mode():
        z = ref.encode(x).latent
        diff = ((ours.encode(x) * sf - z).float().norm() / z.float().norm()).item()
        fns = {
            "ours encode": lambda: ours.encode(x),
            "diffusers encode": lambda: ref.encode(x),
            "ours decode": lambda: ours.decode(z / sf),
            "diffusers decode": lambda: ref.decode(z).sample,
        }
        if args.before:
            with tempfile.TemporaryDirectory() as tmp:
                before = revision_dcae(args.before, tmp)(ours.config).eval()
            before.load_state_dict(ours.state_dict())
            before = before.to(dtype)
            fns["before encode"] = lambda: before.encode(x)
            fns["before decode"] = lambda: before.decode(z / sf)
        compile_s: dict[str, float] = {}
        compile_err: dict[str, tuple[float, float]] = {}
        if args.compile:
            comp = compile_autoencoder(copy.deepcopy(ours))
            compile_s["image"] = compile_now(comp.encode, x) + compile_now(comp.decode, z / sf)
            compile_err["image"] = (
                rel_l2(comp.encode(x), ours.encode(x)),
                rel_l2(comp.decode(z / sf), ours.decode(z / sf)),
            )
            fns["compiled encode"] = lambda: comp.encode(x)
            fns["compiled decode"] = lambda: comp.decode(z / sf)
        t = interleaved(fns, args.rounds)
        faults = {f"image {k}": v[2] for k, v in t.items()}
        for d in ("encode", "decode"):
            lines.append(row(f"image {d}", args.batch, t[f"ours {d}"], t[f"diffusers {d}"]))
            if args.before:
                bd = t[f"before {d}"]
                lines.append(
                    row(f"image {d} {args.before[:7]}", args.batch, bd, t[f"diffusers {d}"])
                )
                lines.append(row(f"image {d} vs {args.before[:7]}", args.batch, t[f"ours {d}"], bd))
            if args.compile:
                lines.append(
                    row(f"image {d} compiled", args.batch, t[f"compiled {d}"], t[f"diffusers {d}"])
                )
        if args.video:
            torch.manual_seed(0)
            base = DCAE(VIDEO_CONFIG).eval()
            vid = DCAE(VIDEO_CONFIG).eval()
            vid.load_state_dict(base.state_dict())
            vid = vid.to(dtype)
            v = torch.rand(args.batch, 3, args.frames, args.video_size, args.video_size) * 2 - 1
            vz = base.encode(v)
            vfns = {
                "ours encode": lambda: vid.encode(v.to(dtype)),
                "base encode": lambda: base.encode(v),
                "ours decode": lambda: vid.decode(vz.to(dtype)),
                "base decode": lambda: base.decode(vz),
            }
            if args.compile:
                vcomp = compile_autoencoder(copy.deepcopy(vid))
                vx, vzd = v.to(dtype), vz.to(dtype)
                compile_s["video"] = compile_now(vcomp.encode, vx) + compile_now(vcomp.decode, vzd)
                compile_err["video"] = (
                    rel_l2(vcomp.encode(vx), vid.encode(vx)),
                    rel_l2(vcomp.decode(vzd), vid.decode(vzd)),
                )
                vfns["compiled encode"] = lambda: vcomp.encode(vx)
                vfns["compiled decode"] = lambda: vcomp.decode(vzd)
            t = interleaved(vfns, args.rounds)
            faults |= {f"video {k}": v[2] for k, v in t.items()}
            for d in ("encode", "decode"):
                lines.append(row(f"video {d}", args.batch, t[f"ours {d}"], t[f"base {d}"]))
                if args.compile:
                    lines.append(
                        row(f"video {d} compiled", args.batch, t[f"compiled {d}"], t[f"base {d}"])
                    )
    print(
        f"config {args.config}, input {tuple(x.shape)}, {args.dtype}, threads {args.threads}, "
        f"median of {args.rounds} interleaved rounds, latent rel-L2 vs diffusers {diff:.1e}, "
        f"load average {load[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    if args.video:
        print(
            f"video: input (B, 3, {args.frames}, {args.video_size}, {args.video_size}); "
            "baseline = vidcli's own fp32 eager path"
        )
    for k, sec in compile_s.items():
        enc_err, dec_err = compile_err[k]
        print(
            f"compile time ({k}, encode + decode): {sec:.1f} s; compiled vs eager rel-L2: "
            f"encode {enc_err:.1e}, decode {dec_err:.1e}"
        )
    print(f"{'':26}{'ours item/s':>12}{'baseline/s':>14}{'ratio':>8}{'cpu':>8}")
    for line in lines:
        print(line)
    print(
        "minor page faults per call (median): "
        + ", ".join(f"{k} {v:.0f}" for k, v in faults.items())
    )


if __name__ == "__main__":
    main()
