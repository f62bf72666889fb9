"""Interleaved timing of uncached sampling against caching specs on the bundled demo model:
A B C A B C ... rounds, median ratio per spec (DiT process-CPU seconds, and wall seconds).

    OMP_NUM_THREADS=1 python benchmarks/caching_interleaved.py --steps 50 --rounds 4 \
        taylorseer-lite:5 uniform:5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vidcli.benchmark.caching import DEFAULT_PROMPTS
from vidcli.generate import _valid_size, load_generate_recipe
from vidcli.sampling.cache import build_policy, find_calibration, parse_cache
from vidcli.sampling.cache.runner import CachedDiT
from vidcli.sampling.phases import sample_videos
from vidcli.sampling.pipeline import load_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="METHOD:VALUE to time against uncached")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    recipe = load_generate_recipe(None, None, [f"sample.steps={args.steps}"])
    pipe, sample = load_pipeline(recipe), recipe.sample
    size = _valid_size(pipe.ae, sample.frames, sample.height, sample.width, False)
    frames = pipe.ae.latent_shape(*size)[1]
    calibration = find_calibration(sample.cache_calibration, recipe.dit.path)
    prompts = list(DEFAULT_PROMPTS)
    seeds = list(range(len(prompts)))

    def timed(spec: str | None) -> tuple[float, float]:
        cached = None
        if spec is not None:
            policy = build_policy(parse_cache(spec), calibration, args.steps, frames)
            cached = CachedDiT(pipe.dit, policy, args.steps)
        fn = cached or pipe.dit.forward_video
        spent = [0.0, 0.0]

        def model_fn(*a):
            cpu, wall = time.process_time(), time.perf_counter()
            out = fn(*a)
            spent[0] += time.process_time() - cpu
            spent[1] += time.perf_counter() - wall
            return out

        sample_videos(pipe, sample, prompts, seeds, size, model_fn=model_fn, hooks=cached)
        return spent[0], spent[1]

    timed(None)  # warm-up
    runs: dict[str | None, list[tuple[float, float]]] = {s: [] for s in [None, *args.specs]}
    for _ in range(args.rounds):
        for spec in runs:
            runs[spec].append(timed(spec))
    base = runs.pop(None)
    print(f"threads {torch.get_num_threads()}, {args.steps} steps, {args.rounds} rounds")
    print("uncached DiT CPU s:", [round(c, 2) for c, _ in base])
    for spec, times in runs.items():
        cpu = statistics.median(b[0] / t[0] for b, t in zip(base, times, strict=True))
        wall = statistics.median(b[1] / t[1] for b, t in zip(base, times, strict=True))
        print(f"{spec}: DiT speedup {cpu:.2f}x (CPU time), {wall:.2f}x (wall), median of rounds")


if __name__ == "__main__":
    main()
