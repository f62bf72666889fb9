"""Sampler-side accelerations on the demo model: fidelity per DiT evaluation.

Two questions, answered with decoded videos (PSNR on [0, 1], mean over prompts):
- solvers: RF-Solver (rf2) at N/2 steps against Euler at N steps, both against a `--reference`
  step Euler run, at the same number of DiT evaluations, with the recipe's guidance oscillation
  (`--no-oscillation` turns it off). Oscillation starts at a fraction of the schedule and rf2 gets
  the scale Euler's alternation averages to (`flow.oscillated_scale`), so every row solves the same
  ODE. `dit_rows` counts the batch rows evaluated: Euler's scale-1 steps run the conditional rows
  only, rf2's averaged scale needs both CFG branches at every evaluation.
- leap: Linear Proportional Leap and token merging (TDTM) at `--steps`, against the full run at
  the same steps (the recipe's own settings), with the evaluations each one saved.

    python benchmarks/sampler_fidelity.py --solver-steps 16 20 --reference 200 --steps 0
    python benchmarks/sampler_fidelity.py --steps 50 --lpl-start 0.3 0.47 --tdtm 10 25
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from vidcli.generate import _valid_size, load_generate_recipe
from vidcli.metrics import psnr
from vidcli.sampling.phases import sample_videos
from vidcli.sampling.pipeline import load_pipeline

PROMPTS = (
    "a red circle moving right",
    "a blue square moving down",
    "a green triangle moving left",
    "a yellow circle moving up",
)


class Counted:
    """The DiT call, counting evaluations and their wall time."""

    def __init__(self, fn):
        self.fn, self.calls, self.rows, self.seconds = fn, 0, 0, 0.0

    def __call__(self, *args):
        self.calls += 1
        self.rows += args[0].shape[0]
        start = time.perf_counter()
        out = self.fn(*args)
        self.seconds += time.perf_counter() - start
        return out


def mean_psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    a, b = (video + 1) / 2, (reference + 1) / 2
    return sum(psnr(a[i], b[i]) for i in range(len(a))) / len(a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solver-steps", type=int, nargs="*", default=[10, 20, 50])
    parser.add_argument("--reference", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lpl-start", type=float, nargs="*", default=[0.3, 0.47])
    parser.add_argument("--lpl-patience", type=int, default=3)
    parser.add_argument("--tdtm", type=int, nargs="*", default=[10, 25])
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="How many of PROMPTS.")
    parser.add_argument(
        "--no-oscillation", action="store_true", help="Solver rows without guidance oscillation."
    )
    args = parser.parse_args()
    prompts = list(PROMPTS[: args.prompts])

    recipe = load_generate_recipe(None, None, [])
    pipe = load_pipeline(recipe)
    base = recipe.sample
    size = _valid_size(pipe.ae, base.frames, base.height, base.width, False)
    seeds = [base.seed + i for i in range(len(prompts))]

    def run(**changes):
        sample = dataclasses.replace(base, **changes)
        counted = Counted(pipe.dit.forward_video)
        video = sample_videos(pipe, sample, prompts, seeds, size, model_fn=counted)
        return video, counted

    rows = []

    def report(group, name, video, counted, reference, ref_name):
        row = {
            "group": group,
            "row": name,
            "dit_evals": counted.calls,
            "dit_rows": counted.rows // len(prompts),
            "dit_s": round(counted.seconds, 1),
            "psnr_db": round(mean_psnr(video, reference), 2),
            "against": ref_name,
        }
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)

    with torch.no_grad():
        if args.solver_steps:
            plain = {"text_osci": False, "image_osci": False} if args.no_oscillation else {}
            reference, _ = run(steps=args.reference, **plain)
            for n in args.solver_steps:
                video, counted = run(steps=n, **plain)
                report("solver", f"euler {n} steps", video, counted, reference,
                       f"euler {args.reference}")  # fmt: skip
                video, counted = run(steps=n // 2, solver="rf2", **plain)
                report("solver", f"rf2 {n // 2} steps", video, counted, reference,
                       f"euler {args.reference}")  # fmt: skip
        if args.steps and (args.lpl_start or args.tdtm):
            full, counted = run(steps=args.steps)
            report("leap", f"full {args.steps} steps", full, counted, full, "itself")
            for start in args.lpl_start:
                video, counted = run(
                    steps=args.steps, lpl=True, lpl_start=start, lpl_patience=args.lpl_patience
                )
                report("leap", f"lpl start {start}", video, counted, full,
                       f"full {args.steps}")  # fmt: skip
            for merge in args.tdtm:
                video, counted = run(steps=args.steps, tdtm_steps=merge)
                report("leap", f"tdtm {merge} steps", video, counted, full,
                       f"full {args.steps}")  # fmt: skip

    print("| group | row | DiT evaluations | rows per prompt | DiT s | PSNR dB | against |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['group']} | {r['row']} | {r['dit_evals']} | {r['dit_rows']} | {r['dit_s']} | "
            f"{r['psnr_db']} | {r['against']} |"
        )


if __name__ == "__main__":
    main()
