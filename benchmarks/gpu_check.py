"""The GPU check of issue 13, driven by `benchmarks/gpu_check.sh` (which installs first).

Steps, each recorded (a failing step does not stop the others; the exit code is 1 if any failed):
1. `tests`: the CUDA-marked tests (`pytest -m cuda tests/test_cuda.py tests/test_quantize.py`);
2. `train`: train-dit for 10 steps (3 warm-up + 7 timed) at 768 px / 128 frames, the 11B layout cut
   to 2 double + 4 single blocks, bf16, every block checkpointed, on random pre-extracted latents
   of both AEs (benchmarks/train_throughput.py: 4x8x8 patch 2 vs 4x32x32 patch 1);
3. `compare_ae`: `vidcli benchmark --compare-ae --device cuda --dtype bf16` (its CUDA defaults are
   the gpu-anchors.md setting);
4. `dcae`: Video DC-AE f32t4c128 encode and decode of one 768 px x 128-frame clip in the
   reference's 256 px / 32-frame tiles (overlap 0.25), bf16, one call after a warm-up, with the
   peak allocated memory;
5. `streaming`: one CFG denoiser call of the 11B layout cut to 4 double + 8 single blocks (bf16,
   the 256 px / 129-frame latent of the HunyuanVideo VAE, 512 text tokens) with its blocks
   resident against streamed from pinned host memory with prefetch (`offload = "blocks"`),
   interleaved; the goal is streamed within 1.3× of resident;
6. `compile`: `benchmarks/compile_dit.py`, the sampling loop eager vs `--compile` (`forward`,
   the flag's mode) on `mmdit-b` at 256 px (bf16), compile time apart;
7. `quantize`: one CFG DiT call of the 11B layout cut to 2 double + 4 single blocks (the streaming
   step's latent and text), compiled (`blocks`), bf16 against `--quantize fp8` (torchao float8
   dynamic, per row) and `int8-wo`, interleaved after a warm-up: time, error against bf16, weight
   bytes held and planned; fp8 is skipped with its refusal where it cannot run (CPU, SM < 8.9);
8. `sequence_parallel` (2+ GPUs, or gloo ranks with `--dry-run`).
Then `gpu-check.json` and `gpu-check.md` (ours beside the numbers of
shared/reference/gpu-anchors.md) go to `--out`.

`--dry-run` runs the same steps at tiny shapes on the CPU (the CUDA tests then skip).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# gpu-anchors.md (Open-Sora 2.0's code on one H100, bf16): what each of our numbers sits beside.
ANCHORS = {
    "train_step_hcae_s": 0.413,
    "train_step_baseline_s": 3.961,
    "train_speedup": 9.59,
    "dit_forward_speedup": 9.08,
    "dcae_encode_s": 9.35,
    "dcae_decode_s": 14.69,
    "dcae_decode_peak_gb": 5.8,
}
TARGETS = {
    "train_speedup": ">= 9",
    "dcae_decode_s": "<= 7 (H100)",
    "train_mfu": ">= 0.50",
    "streamed_over_resident": "<= 1.3",
    "compile_speedup_forward": "> 1",
    "fp8_speedup": ">= 1.15 (field: 1.16x CogVideoX-5B, 1.30x FLUX)",
}


def settings(dry_run: bool) -> dict[str, Any]:
    """Shapes and sizes of every step: the anchors' setting, or tiny ones for `--dry-run`."""
    if dry_run:
        return {
            "device": "cpu",
            "dtype": "fp32",
            "train": ["--dit", "mmdit-tiny", "--frames", "8", "--size", "64", "--text-tokens", "8"],
            "train_steps": ("1", "1"),
            "compare_ae": [
                "--device",
                "cpu",
                "--resolution",
                "64",
                "--frames",
                "8",
                "--dit",
                "mmdit-tiny",
                "--ae",
                "dc-ae-tiny:2",
                "--ae",
                "dc-ae-demo:1",
                "--repeat",
                "1",
                "--text-tokens",
                "8",
                "--steps",
                "2",
            ],
            "dcae": {"preset": "dc-ae-tiny", "frames": 8, "size": 64, "tile": 32, "tile_frames": 4},
            "streaming": {
                "preset": "mmdit-tiny",
                "blocks": (2, 2),
                "latent": (4, 2, 8, 8),
                "text_tokens": 8,
                "rounds": 2,
            },
            "compile": ["--steps", "2", "--rounds", "1", "--variants", "forward"],
            "quantize": {
                "preset": "mmdit-tiny",
                "blocks": (1, 1),
                "latent": (4, 2, 8, 8),
                "text_tokens": 8,
                "rounds": 2,
                "compile": "blocks",
            },
        }
    return {
        "device": "cuda",
        "dtype": "bf16",
        "train": [
            "--dit",
            "opensora-v2-11b",
            "--dit-blocks",
            "2,4",
            "--frames",
            "128",
            "--size",
            "768",
            "--text-tokens",
            "512",
            "--precision",
            "bf16",
            "--grad-checkpointing",
        ],
        "train_steps": ("3", "7"),
        "compare_ae": ["--device", "cuda", "--dtype", "bf16", "--repeat", "2"],
        "dcae": {
            "preset": "dc-ae-f32t4c128",
            "frames": 128,
            "size": 768,
            "tile": 256,
            "tile_frames": 32,
        },
        # Open-Sora 2.0's 256 px recipe: HunyuanVideo VAE latent of 129 frames at 256 px.
        "streaming": {
            "preset": "opensora-v2-11b",
            "blocks": (4, 8),
            "latent": (16, 33, 32, 32),
            "text_tokens": 512,
            "rounds": 5,
        },
        "compile": [
            "--steps",
            "10",
            "--rounds",
            "3",
            "--variants",
            "forward",
            "--threads",
            "8",
            "--set",
            'dit.preset="mmdit-b"',
            "--set",
            'dit.path=""',
            "--set",
            "sample.height=256",
            "--set",
            "sample.width=256",
        ],
        # Regional compile: one graph per block class, so three variants compile within the
        # step's ~90 s; nearly every linear the quantization touches sits in those blocks.
        "quantize": {
            "preset": "opensora-v2-11b",
            "blocks": (2, 4),
            "latent": (16, 33, 32, 32),
            "text_tokens": 512,
            "rounds": 5,
            "compile": "blocks",
        },
    }


def run_json(command: list[str], timeout: float) -> dict[str, Any]:
    """Run a command whose last stdout line is a JSON object; its stderr tail on failure."""
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_tests(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    files = ["tests/test_cuda.py", "tests/test_quantize.py"]
    command = [python, "-m", "pytest", "-q", "-m", "cuda", *files, "-rs"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0:
        raise RuntimeError(f"pytest exit {done.returncode}: {done.stdout[-2000:]}")
    return {"summary": summary}


def step_train(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    warmup, steps = cfg["train_steps"]
    command = [python, "benchmarks/train_throughput.py", *cfg["train"], "--warmup", warmup]
    command += ["--steps", steps, "--rounds", "1", "--shards", "1", "--rows-per-shard", "4"]
    result = run_json(command, timeout=300)
    rows = result["rows"]
    base, hcae = rows["baseline-f8t4"], rows["hcae"]
    return {
        "train_step_hcae_s": 1 / hcae["samples_per_s"],
        "train_step_baseline_s": 1 / base["samples_per_s"],
        "train_speedup": hcae["speedup"],
        "tokens_per_s_hcae": hcae["tokens_per_s"],
        "raw": result,
    }


def step_compare_ae(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    command = [python, "-m", "vidcli", "benchmark", "--compare-ae", *cfg["compare_ae"], "--json"]
    # Full-size AE timings of three rows, and rows taking turns on the device (row_placement).
    result = run_json(command, timeout=480)
    hcae = result["rows"][-1]  # compare-ae's last row is the high-compression AE (first: baseline)
    return {
        "dit_forward_speedup": hcae.get("speedup_infer"),
        "train_speedup_compare_ae": hcae.get("speedup_train"),
        "train_mfu": hcae.get("mfu"),
        # The train ratio compares like with like only when these agree (anchors: all on).
        "grad_checkpointing": {
            f"{r['ae']}:{r['patch']}": r.get("grad_checkpointing") for r in result["rows"]
        },
        "row_placement": result["env"].get("row_placement"),
        "raw": result,
    }


def step_dcae(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Encode and decode one clip with the recipe's tiles (random weights: speed only)."""
    import torch

    from vidcli.devices import DTYPES, peak_memory_gb, reset_peak_memory
    from vidcli.models.dcae import TilingConfig, build_autoencoder

    s, device = cfg["dcae"], torch.device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    with torch.device(device):
        ae = build_autoencoder(s["preset"]).to(dtype).eval()
    ae.tiling = TilingConfig(spatial_tile=s["tile"], temporal_tile=s["tile_frames"], overlap=0.25)
    x = torch.rand(1, 3, s["frames"], s["size"], s["size"], device=device, dtype=dtype) * 2 - 1

    def timed(fn) -> float:
        fn()  # warm-up: kernel selection, allocator
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        encode_s = timed(lambda: ae.encode(x))
        z = ae.encode(x)
        reset_peak_memory(device)
        decode_s = timed(lambda: ae.decode(z))
    return {
        "dcae_encode_s": encode_s,
        "dcae_decode_s": decode_s,
        "dcae_decode_peak_gb": peak_memory_gb(device),
        "shape": [s["frames"], s["size"], s["size"]],
    }


def step_sequence_parallel(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """SP 2 (DeepSpeed-Ulysses): a demo generate and a tiny train-dit step on 2 ranks (2 GPUs,
    or 2 gloo ranks with --dry-run); tokens per rank and all-to-all bytes per step beside them."""
    import tempfile

    import torch

    from vidcli.models.mmdit import resolve_config
    from vidcli.sequence_parallel import traffic

    if cfg["device"] == "cuda" and torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs, {torch.cuda.device_count()} visible"}
    sp = ["--nproc", "2", "--set", "launcher.sequence_parallel=2"]
    with tempfile.TemporaryDirectory() as tmp:
        tick = time.perf_counter()
        video = str(Path(tmp) / "sp.mp4")
        generated = run_json(
            [python, "-m", "vidcli", "generate", "a red circle", "--steps", "4", "--out", video,
             *sp, "--json"], timeout=300)  # fmt: skip
        generate_s = time.perf_counter() - tick
        tick = time.perf_counter()
        values = {
            "ae.path": '""',
            "ae.preset": '"dc-ae-tiny"',
            "dit.preset": '"mmdit-tiny"',
            "data.source": '"synthetic:shapes:4"',
            "data.num_frames": "8",
            "data.cache_dir": json.dumps(tmp + "/cache"),
            "train.output": json.dumps(tmp + "/run"),
            "train.batch_size": "2",
            "train.max_steps": "1",
            "text.max_length": "8",
        }
        overrides = [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
        trained = run_json(
            [
                python,
                "-m",
                "vidcli",
                "train-dit",
                "recipes/demo-dit.toml",
                *overrides,
                *sp,
                "--json",
            ],
            timeout=300,
        )
        train_s = time.perf_counter() - tick
    demo = resolve_config("mmdit-demo", patch_size=2)
    # The demo: 16 frames of 64 px -> 4 x 4 x 4 tokens at patch 2, 16 text tokens, 2 CFG rows.
    per_step = traffic(demo, rows=2, img_tokens=64, txt_tokens=16, size=2, dtype_bytes=4)
    return {
        "generate_s": generate_s,
        "generate_device": generated.get("device"),
        "generate_sp_planned": per_step,
        "generate_image_tokens_per_rank": generated.get("image_tokens_per_rank"),
        "generate_all_to_all_bytes_per_step": generated.get("all_to_all_bytes_per_step"),
        "train_step_s": train_s,
        "train_loss": trained.get("final_loss"),
    }


def random_inputs(shapes: dict[str, Any], device, dtype) -> dict[str, Any]:
    """Uniform random tensors on `device` for `dit_inputs`' shapes (None stays None)."""
    import torch

    return {
        k: None if v is None else torch.rand(v.shape, device=device, dtype=dtype)
        for k, v in shapes.items()
    }


def timed_call(model, inputs: dict[str, Any], device) -> float:
    """Seconds of one `model(**inputs)`, the device's queue drained before and after."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(**inputs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def step_streaming(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One CFG denoiser call with the DiT's blocks resident vs streamed (`stream_blocks`: pinned
    host copies, the next block prefetched on a side stream), interleaved after a warm-up."""
    import copy
    import statistics

    import torch

    from vidcli.devices import DTYPES
    from vidcli.models.mmdit import build_dit
    from vidcli.offload import stream_blocks
    from vidcli.plans.sizes import dit_inputs

    s, device = cfg["streaming"], torch.device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    double, single = s["blocks"]
    dit = build_dit(s["preset"], depth=double, depth_single_blocks=single).to(dtype).eval()
    blocks = [*dit.double_blocks, *dit.single_blocks]
    block_bytes = sum(t.nbytes for b in blocks for t in [*b.parameters(), *b.buffers()])
    resident = copy.deepcopy(dit).to(device)
    streamed = dit
    stream_blocks(streamed, device)
    shapes = dit_inputs(dit, 2, s["latent"], s["text_tokens"], dtype)
    inputs = random_inputs(shapes, device, dtype)

    with torch.inference_mode():
        gap = (resident(**inputs) - streamed(**inputs)).abs().max().item()  # also the warm-up
        rounds = [
            (timed_call(resident, inputs, device), timed_call(streamed, inputs, device))
            for _ in range(s["rounds"])
        ]
    resident_s = statistics.median(r for r, _ in rounds)
    streamed_s = statistics.median(t for _, t in rounds)
    return {
        "streamed_over_resident": statistics.median(t / r for r, t in rounds),
        "resident_call_s": resident_s,
        "streamed_call_s": streamed_s,
        "block_bytes_per_call": block_bytes,
        "tokens": shapes["img"].shape[1],
        "max_abs_difference": gap,
        "rounds": rounds,
    }


def held_bytes(module) -> int:
    """Bytes `module`'s parameters hold, a torchao tensor counted by its parts (data, scales)."""
    total = 0
    for tensor in module.parameters():
        flatten = getattr(tensor, "__tensor_flatten__", None)
        parts = [getattr(tensor, n) for n in flatten()[0]] if flatten else [tensor]
        total += sum(p.numel() * p.element_size() for p in parts)
    return total


def step_quantize(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One CFG DiT call, compiled, in the compute dtype vs `[sample] quantize` fp8 and int8-wo
    (`vidcli.quantize`), interleaved after a warm-up (which also compiles); each variant's error
    against the unquantized output and its weight bytes, held and as the memory plan counts them.
    A mode `check_quantize` refuses here (fp8 on the CPU or below SM 8.9) is skipped with that
    reason; a mode that fails fails the step after the others are measured."""
    import copy
    import statistics

    import torch

    from vidcli.compile import compile_dit
    from vidcli.devices import DTYPES
    from vidcli.errors import UsageError
    from vidcli.models.mmdit import build_dit
    from vidcli.plans.sizes import dit_inputs
    from vidcli.quantize import check_quantize, quantize_linears, quantized_bytes

    s, device = cfg["quantize"], torch.device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    double, single = s["blocks"]
    plain = build_dit(
        s["preset"], device=device, dtype=dtype, depth=double, depth_single_blocks=single
    ).eval()
    meta = build_dit(s["preset"], device="meta", depth=double, depth_single_blocks=single)
    models, skipped, failed = {"none": plain}, {}, {}
    for mode in ("fp8", "int8-wo"):
        try:
            check_quantize(mode, device, dtype, s["compile"])
        except UsageError as err:
            skipped[mode] = str(err)
            continue
        try:
            models[mode] = quantize_linears(copy.deepcopy(plain), mode)  # copy, then compile
        except Exception as err:  # one failing mode must not lose the other's numbers
            failed[mode] = f"{type(err).__name__}: {err}"[:2000]
    for model in models.values():
        compile_dit(model, s["compile"])
    shapes = dit_inputs(plain, 2, s["latent"], s["text_tokens"], dtype)
    inputs = random_inputs(shapes, device, dtype)

    outputs, warmup_s = {}, {}
    with torch.inference_mode():
        for mode, model in list(models.items()):  # warm-up: compiles
            start = time.perf_counter()
            try:
                outputs[mode] = model(**inputs).float()
            except Exception as err:
                if mode == "none":
                    raise
                failed[mode] = f"{type(err).__name__}: {err}"[:2000]
                del models[mode]
                continue
            warmup_s[mode] = time.perf_counter() - start
        rounds = [
            {m: timed_call(model, inputs, device) for m, model in models.items()}
            for _ in range(s["rounds"])
        ]
    reference = outputs["none"]
    variants = {}
    for mode, model in models.items():
        gap = outputs[mode] - reference
        variants[mode] = {
            "call_s": statistics.median(r[mode] for r in rounds),
            "speedup": statistics.median(r["none"] / r[mode] for r in rounds),
            "rel_l2_error": (gap.norm() / reference.norm()).item(),
            "max_abs_error_over_max": (gap.abs().max() / reference.abs().max()).item(),
            "warmup_s": warmup_s[mode],
            "weight_bytes": held_bytes(model),
            "planned_weight_bytes": quantized_bytes(meta, mode, dtype.itemsize),
        }
    result = {
        **{
            f"{m.replace('-', '_')}_speedup": v["speedup"]
            for m, v in variants.items()
            if m != "none"
        },
        **{
            f"{m.replace('-', '_')}_rel_l2_error": v["rel_l2_error"]
            for m, v in variants.items()
            if m != "none"
        },
        "variants": variants,
        "quantize_skipped": skipped,
        "quantize_failed": failed,
        "compile": s["compile"],
        "tokens": shapes["img"].shape[1],
        "rounds": rounds,
    }
    if failed:  # the step fails, its numbers kept in the error (gpu-check.json has it whole)
        raise RuntimeError(f"quantize {', '.join(failed)} failed: {json.dumps(result)}")
    return result


def step_compile(python: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The sampling loop eager vs compiled (`benchmarks/compile_dit.py`), compile time apart."""
    result = run_json([python, "benchmarks/compile_dit.py", *cfg["compile"]], timeout=480)
    rows = {row["variant"]: row for row in result["rows"]}
    return {
        **{f"compile_speedup_{n}": row["speedup"] for n, row in rows.items() if n != "eager"},
        "recompiles_after_warmup": result["recompiles_after_warmup"],
        "raw": result,
    }


STEPS = {
    "tests": step_tests,
    "train": step_train,
    "compare_ae": step_compare_ae,
    "dcae": step_dcae,
    "streaming": step_streaming,
    "compile": step_compile,
    "quantize": step_quantize,
    "sequence_parallel": step_sequence_parallel,
}


def markdown(report: dict[str, Any]) -> str:
    """Ours beside gpu-anchors.md, one row per number."""
    lines = [
        f"GPU check on {report['device_name']} ({report['mode']}), {report['date']}",
        "",
        "| what | vidcli | reference (gpu-anchors.md) | target |",
        "|---|---|---|---|",
    ]
    measured: dict[str, Any] = {}
    for result in report["steps"].values():
        measured |= {k: v for k, v in result.get("result", {}).items() if k != "raw"}
    keys = ("train_mfu", "streamed_over_resident", "compile_speedup_forward")
    quantized = ("fp8_speedup", "fp8_rel_l2_error", "int8_wo_speedup", "int8_wo_rel_l2_error")
    for key in (*ANCHORS, *keys, *quantized):
        value = measured.get(key)
        ours = "—" if value is None else f"{value:.3g}"
        ref = ANCHORS.get(key, "—")
        lines.append(f"| {key} | {ours} | {ref} | {TARGETS.get(key, '')} |")
    lines.append("")
    if ckpt := measured.get("grad_checkpointing"):
        rows = ", ".join(f"{row} {'on' if on else 'off'}" for row, on in ckpt.items())
        lines.append(f"- compare_ae gradient checkpointing per row: {rows}")
    for mode, why in measured.get("quantize_skipped", {}).items():
        lines.append(f"- quantize {mode} skipped: {why}")
    for name, result in report["steps"].items():
        state = "ok" if result["ok"] else f"FAILED: {result['error'][:300]}"
        lines.append(f"- {name}: {state} ({result['seconds']:.0f} s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--only", action="append", choices=list(STEPS), help="repeatable")
    args = parser.parse_args(argv)

    import torch

    cfg = settings(args.dry_run)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    device_name = (
        torch.cuda.get_device_name(0) if cfg["device"] == "cuda" else platform.processor() or "cpu"
    )
    report: dict[str, Any] = {
        "mode": "dry-run (tiny shapes, CPU)" if args.dry_run else "full",
        "device_name": device_name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "anchors": ANCHORS,
        "steps": {},
    }
    started = time.perf_counter()
    for name, step in STEPS.items():
        if args.only and name not in args.only:
            continue
        tick = time.perf_counter()
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        try:
            entry = {"ok": True, "result": step(sys.executable, cfg)}
        except Exception as err:  # recorded, and the exit code says so
            entry = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        entry["seconds"] = time.perf_counter() - tick
        report["steps"][name] = entry
        print(
            f"gpu_check: {name} {'ok' if entry['ok'] else 'FAILED'} in {entry['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    report["total_s"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu-check.md").write_text(markdown(report))
    print(markdown(report), file=sys.stderr)
    print(
        json.dumps(
            {
                "out": str(args.out),
                "ok": all(s["ok"] for s in report["steps"].values()),
                "total_s": report["total_s"],
            }
        )
    )
    return 0 if all(s["ok"] for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
