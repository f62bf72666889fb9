"""The DiT sampling loop eager vs under `torch.compile` (vidcli.compile), interleaved.

    python benchmarks/compile_dit.py --rounds 15
    python benchmarks/compile_dit.py --threads 1 --rounds 7
    python benchmarks/compile_dit.py --threads 1 --rounds 5 --steps 4 \
        --set dit.preset="mmdit-s" --set dit.path="" --set sample.height=128 --set sample.width=128

Loads the bundled demo pipeline (its recipe and weights; `--set` overrides the recipe, e.g. a
random-weight mid-size DiT as above), gives each compile mode its own copy of the DiT, runs one
sampling loop per variant as warm-up (compiling; its seconds and graphs are the compile cost),
then times whole sampling loops (`phases.sample_latents`: the demo's schedule, CFG with
oscillating guidance, so 2 rows on some steps and 1 on others) round-robin and reports medians,
the speed-up over eager (median of per-round ratios), the graphs compiled during the timed rounds
(0 = no recompile after warm-up), graph breaks, and the largest difference from eager's latents.
Compile times are cold (a fresh inductor cache) unless `--warm-cache`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import statistics
import tempfile
import time

import torch

from vidcli.compile import compile_dit, compiled_graphs
from vidcli.generate import load_generate_recipe
from vidcli.sampling.phases import encode_text, sample_latents
from vidcli.sampling.pipeline import load_pipeline
from vidcli_kernels.linear import cpu_linear_backend

VARIANTS = ("blocks", "forward", "forward-frozen", "blocks-cpp", "forward-cpp")
"""Compile mode, then -frozen (inductor freezing) or -cpp (inductor's C++ wrapper)."""


def graph_breaks() -> int:
    """Graph breaks dynamo has recorded in this process."""
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_generate_recipe(None, None, [*args.set, f"sample.steps={args.steps}"])
    sample = recipe.sample
    pipe = load_pipeline(recipe)
    size = (sample.frames, sample.height, sample.width)
    latent_shape = pipe.ae.latent_shape(*size)
    seeds = list(range(args.batch))
    with torch.no_grad():
        emb, neg = encode_text(pipe, [args.prompt] * args.batch, [sample.negative_prompt])

    device = next(pipe.dit.parameters()).device

    def loop(p) -> torch.Tensor:
        with torch.no_grad():
            latents = sample_latents(p, sample, emb, neg, seeds, latent_shape)
        if device.type == "cuda":  # the timer reads the host clock: wait for the queued kernels
            torch.cuda.synchronize(device)
        return latents

    pipes = {"eager": pipe}
    compile_rows = {}
    for name in args.variants:
        dit = copy.deepcopy(pipe.dit)
        mode, _, option = name.partition("-")
        stats = compile_dit(dit, mode, freeze=option == "frozen", cpp_wrapper=option == "cpp")
        pipes[name] = dataclasses.replace(pipe, dit=dit)
        tick = time.perf_counter()
        loop(pipes[name])  # warm-up: compiles every shape the loop meets
        compile_rows[name] = {
            "first_loop_s": round(time.perf_counter() - tick, 2),
            **stats().as_dict(),
        }
    reference = loop(pipe)
    max_abs_diff = {
        name: float((loop(p) - reference).abs().max()) for name, p in pipes.items() if p is not pipe
    }
    graphs_before, seconds = compiled_graphs(), {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, p in pipes.items():
            tick = time.perf_counter()
            loop(p)
            seconds[name].append(time.perf_counter() - tick)
    c = pipe.dit.config
    p = c.patch_size
    tokens = latent_shape[1] * (latent_shape[2] // p) * (latent_shape[3] // p)
    rows = []
    for name, row in seconds.items():
        ratio = statistics.median(e / s for e, s in zip(seconds["eager"], row, strict=True))
        rows.append(
            {
                "variant": name,
                "loop_s": round(statistics.median(row), 4),
                "speedup": round(ratio, 3),
                **compile_rows.get(name, {}),
                **({"max_abs_diff": max_abs_diff[name]} if name in max_abs_diff else {}),
            }
        )
    return {
        "dit": recipe.dit.preset if not recipe.dit.path else f"{recipe.dit.preset} (demo weights)",
        "params_m": round(sum(q.numel() for q in pipe.dit.parameters()) / 1e6, 2),
        "image_tokens": tokens,
        "text_tokens": emb.tokens.shape[1],
        "steps": sample.steps,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "cpu_linear": cpu_linear_backend(),
        "rounds": args.rounds,
        "torch": torch.__version__,
        "inductor_cache": "warm" if args.warm_cache else "cold",
        "rows": rows,
        "recompiles_after_warmup": compiled_graphs() - graphs_before,
        "graph_breaks": graph_breaks(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads (default: torch's own choice, what `vidcli generate` runs with)",
    )
    parser.add_argument("--rounds", type=int, default=7, help="timed loops per variant")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (the demo's 20)")
    parser.add_argument("--batch", type=int, default=1, help="prompts sampled together")
    parser.add_argument("--prompt", default="a red circle moving right")
    parser.add_argument(
        "--variants",
        default="blocks,forward",
        help=f"comma-separated compiled variants among {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--set", action="append", default=[], help="recipe override (repeatable), as vidcli --set"
    )
    parser.add_argument(
        "--warm-cache",
        action="store_true",
        help="keep inductor's on-disk cache (default: a fresh one, so compile_s is a cold compile)",
    )
    args = parser.parse_args()
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants {','.join(unknown)}: choose among {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory(prefix="inductor-") as fresh:
        if not args.warm_cache:  # read by inductor at each compile
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = fresh
        print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
