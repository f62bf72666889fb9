"""MagCache (Ma et al., NeurIPS'25, arXiv 2506.09045): skip the whole stack while the error
modelled from calibrated residual magnitude ratios stays within δ.

What it reuses: the stack residual r = (last block's image output) - (embedded input) of the last
computed step, kept per CFG branch (rows) and per evaluation stream; a skipped step returns x + r.

Rule: γ_t = mean over tokens of ‖r_t‖ / ‖r_{t-1}‖, calibrated once per step count from one
uncached sample (the first calibration prompt's conditional rows; `calibration.Recorder`). Since
a branch's last computed step, the ratio R = ∏γ and the error E = Σ|1 - R| accumulate over the
steps; step t is skipped while every branch of the call has E < δ and at most MAX_SKIPS steps
since its last computed one, else computed (which restarts R and E of the call's branches). The
first RETENTION of the steps and the last step are computed.

Published MagCache differs: it calibrates the conditional and unconditional branches' curves
separately and interpolates a curve to other step counts; here one curve (conditional) serves every
branch and a step count needs its own calibration. MAX_SKIPS = 4 and RETENTION = 0.2 are those of
the authors' Wan2.1 script (with δ = 0.12 there); their ComfyUI nodes default to K = 2 (checked in
public copies, 2026-12).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows

MAX_SKIPS = 4
RETENTION = 0.2


def magnitude_ratio(residual: torch.Tensor, previous: torch.Tensor) -> float:
    """mean over tokens of ‖r_t‖₂ / ‖r_{t-1}‖₂ for (L, D) residuals of one row."""
    ratio = residual.norm(dim=-1) / previous.norm(dim=-1).clamp_min(1e-12)
    return ratio.mean().item()


class MagCache(CachePolicy):
    name = "magcache"

    def __init__(self, delta: float, ratios: Sequence[float]):
        self.delta, self.ratios = delta, [float(g) for g in ratios]
        self.reset()

    def reset(self) -> None:
        self.residual: torch.Tensor | None = None
        self.computed: dict[str, int] = {}
        """Per CFG branch: the step its residual was last computed at."""

    def error(self, since: int, step: int) -> float:
        """E = Σ_j |1 - ∏_{i<=j} γ_i| over the steps j after `since` up to `step`."""
        ratio, error = 1.0, 0.0
        for j in range(since + 1, step + 1):
            ratio *= self.ratios[j]
            error += abs(1 - ratio)
        return error

    def __call__(self, run: StepRun) -> torch.Tensor:
        x, branches = run.embedded.x, run.branches
        # Under guidance oscillation a conditional-only step refreshes one branch: each branch
        # accumulates from its own last computed step, and the call is skipped only if all can.
        compute = (
            any(b not in self.computed for b in branches)
            or run.step < RETENTION * run.num_steps
            or run.last
            or any(
                run.step - self.computed[b] > MAX_SKIPS
                or self.error(self.computed[b], run.step) >= self.delta
                for b in branches
            )
        )
        if not compute:
            run.kind = "skipped"
            return run.head(x + take_rows(self.residual, run.batch))
        for b in branches:
            self.computed[b] = run.step
        image = run.compute()
        self.residual = put_rows(self.residual, image - x)
        return run.head(image)
