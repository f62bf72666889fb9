"""SmoothCache (Liu et al., CVPRW'25, arXiv 2411.10510): a static per-module-type reuse schedule
from layer-output errors measured once on a few prompts.

Calibration (`calibration.record_smoothcache`): along uncached trajectories, for every module and
step s, e_j(s) = ‖L_{s-j} - L_s‖₁ / ‖L_s‖₁ for j = 1..lookahead, averaged over the blocks of a
type and over prompts: E_j[i] = the error of reusing step i's output j steps later. Schedule
(`schedule`): from i = 0, take the largest j with E_j[i] <= α, compute at i and reuse at
i+1..i+j, continue at i+j+1; the first and last steps are always computed. Types on the MMDiT:
double.attn (both streams), double.img_mlp, double.txt_mlp, single.out (the authors list no MMDiT
mapping; shared/reference/caching-methods.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, module_types

LOOKAHEAD = 5


def schedule(errors: Sequence[Sequence[float | None]], alpha: float, num_steps: int) -> list[bool]:
    """True = compute. errors[j-1][i] = E_j[i] (error of reusing step i's output j steps later)."""
    plan = [False] * num_steps
    i = 0
    while i < num_steps:
        plan[i] = True
        reuse = 0
        for j in range(len(errors), 0, -1):
            error = errors[j - 1][i] if i + j < num_steps else None
            if error is not None and error <= alpha:
                reuse = j
                break
        i += reuse + 1
    plan[0] = plan[-1] = True
    return plan


class SmoothCache(CachePolicy):
    name = "smoothcache"

    def __init__(
        self, alpha: float, curves: Mapping[str, Sequence[Sequence[float | None]]], steps: int
    ):
        self.alpha = alpha
        self.plans = {kind: schedule(errs, alpha, steps) for kind, errs in curves.items()}
        self.reset()

    def reset(self) -> None:
        self.cache: dict[Key, Value] = {}

    def __call__(self, run: StepRun) -> torch.Tensor:
        depth = len(run.model.double_blocks)
        reused = computed = 0

        def provide(key: Key, compute) -> Value:
            nonlocal reused, computed
            if self.plans[module_types(key, depth)][run.step] or key not in self.cache:
                value = compute()
                self.cache[key] = put_rows(self.cache.get(key), value)
                computed += 1
                return value
            reused += 1
            return take_rows(self.cache[key], run.batch)

        image = run.compute(lambda i: ModuleHook(i, provide))
        if reused:
            run.kind = "partial" if computed else "skipped"
        return run.head(image)
