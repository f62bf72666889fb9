"""FoCa, Forecast-then-Calibrate (Zheng et al., AAAI'26, arXiv 2508.16211): forecast each module's
output between full steps from the last three full steps, with a second-order predictor-corrector
instead of TaylorSeer's first-order series.

What it forecasts: the same module outputs as TaylorSeer (double blocks' attention of both streams
and their two MLPs, single blocks' linear2 output), kept per (module, CFG branch) and per
evaluation stream, re-gated with the current conditioning. Schedule: the first 3 steps full, then
every K-th (as TaylorSeer, so the two compare at equal full evaluations).

Rule, with full steps t0 < t1 < t2 (gaps h0 = t1 - t0, h1 = t2 - t1) and k steps past t2:
  predictor  F'(t2) = the variable-step BDF2 (three-point backward) derivative at t2,
             P = F(t2) + k·F'(t2);
  corrector  slope at the predicted point s = F'(t2) + k·F''  (F'' the second divided difference
             of the three points, doubled), C = F(t2) + k/2·(F'(t2) + s)  (Heun's trapezoid,
             anchored on the last full step F(t2)).
C is exact on feature sequences that are quadratic in the step index (it equals the parabola
through the three points). With two full steps known only the predictor's first-order part is used.

Published FoCa differs: it treats the features as an ODE in the timestep, its corrector blends the
BDF2 prediction with the anchor by a weight it tunes, and its code was "upon acceptance"; the
formulas here are written from the description (shared/reference/field-2026-12.md), not its code.
"""

from __future__ import annotations

import torch

from vidcli.sampling.cache.base import CachePolicy, periodic_full_step
from vidcli.sampling.cache.hooks import StepRun
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, map_value
from vidcli.sampling.cache.taylorseer import WARMUP_STEPS, branch_rows, cat_rows

HISTORY = 3


def foca_weights(steps: list[int], target: int) -> list[float]:
    """Weights w with F(target) ≈ Σ w_i·F(steps_i), for the last 1-3 full steps (oldest first).

    Three steps: BDF2 predictor + Heun corrector (module docstring); two: linear extrapolation;
    one: the value itself.
    """
    if len(steps) == 1:
        return [1.0]
    k = target - steps[-1]
    if len(steps) == 2:
        h = steps[1] - steps[0]
        return [-k / h, 1 + k / h]
    t0, t1, t2 = steps
    h0, h1 = t1 - t0, t2 - t1
    # F'(t2) = a0·F0 + a1·F1 + a2·F2 (BDF2 on a variable grid)
    a0 = h1 / (h0 * (h0 + h1))
    a1 = -(h0 + h1) / (h0 * h1)
    a2 = (2 * h1 + h0) / (h1 * (h0 + h1))
    # F'' = c0·F0 + c1·F1 + c2·F2 (twice the second divided difference)
    c0 = 2 / (h0 * (h0 + h1))
    c1 = -2 / (h0 * h1)
    c2 = 2 / (h1 * (h0 + h1))
    # C = F2 + k/2·(F' + F' + k·F'') = F2 + k·F' + k²/2·F''
    return [k * a0 + k * k / 2 * c0, k * a1 + k * k / 2 * c1, 1 + k * a2 + k * k / 2 * c2]


def combine(values: list[Value], weights: list[float]) -> Value:
    return map_value(lambda *vs: sum(w * v for w, v in zip(weights, vs, strict=True)), *values)


class FoCa(CachePolicy):
    name = "foca"

    def __init__(self, interval: int):
        self.interval = interval
        self.reset()

    def reset(self) -> None:
        self.history: dict[str, dict[Key, list[Value]]] = {}
        """Per CFG branch, per module: its outputs at the branch's last full steps, oldest first."""
        self.steps: dict[str, list[int]] = {}
        """Per CFG branch: the steps of those full evaluations."""

    def __call__(self, run: StepRun) -> torch.Tensor:
        branches, n = run.branches, run.rows
        known = all(b in self.steps for b in branches)
        if not known or periodic_full_step(run.step, self.interval, WARMUP_STEPS):
            for b in branches:
                self.steps[b] = [*self.steps.get(b, []), run.step][-HISTORY:]

            def provide(key: Key, compute) -> Value:
                value = compute()
                for i, b in enumerate(branches):
                    past = self.history.setdefault(b, {}).setdefault(key, [])
                    past.append(branch_rows(value, i, n))
                    del past[:-HISTORY]
                return value

        else:
            run.kind = "skipped"
            weights = {b: foca_weights(self.steps[b], run.step) for b in branches}

            def provide(key: Key, compute) -> Value:
                return cat_rows([combine(self.history[b][key], weights[b]) for b in branches])

        return run.head(run.compute(lambda i: ModuleHook(i, provide)))
