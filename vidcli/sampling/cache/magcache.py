"""MagCache (Ma et al., NeurIPS'25, arXiv 2506.09045): skip the whole stack while the error
modelled from calibrated residual magnitude ratios stays within δ.

What it reuses: the stack residual r = (last block's image output) - (embedded input) of the last
computed step, kept per CFG branch (rows) and per evaluation stream; a skipped step returns x + r.

Rule: γ_t = mean over tokens of ‖r_t‖ / ‖r_{t-1}‖, calibrated once per step count from one
uncached sample (the first calibration prompt's conditional rows; `calibration.Recorder`). Since
the last computed step, the ratio R = ∏γ and the error E = Σ|1 - R| accumulate over the skipped
steps; step t is skipped while E < δ and at most MAX_SKIPS steps in a row, else computed (R = 1,
E = 0). The first RETENTION of the steps and the last step are computed.

Published MagCache differs: it calibrates the conditional and unconditional branches' curves
separately and interpolates a curve to other step counts; here one curve (conditional) serves every
branch and a step count needs its own calibration. K = 4 and the retention ratio 0.2 are the
published defaults as recalled, not re-read.
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
        self.ratio, self.error, self.skips = 1.0, 0.0, 0

    def __call__(self, run: StepRun) -> torch.Tensor:
        x = run.embedded.x
        compute = (
            self.residual is None
            or self.residual.shape[0] < run.batch  # a branch with no residual yet
            or run.step < RETENTION * run.num_steps
            or run.last
        )
        if not compute:
            self.ratio *= self.ratios[run.step]
            self.error += abs(1 - self.ratio)
            self.skips += 1
            compute = not (self.error < self.delta and self.skips <= MAX_SKIPS)
        if not compute:
            run.kind = "skipped"
            return run.head(x + take_rows(self.residual, run.batch))
        self.ratio, self.error, self.skips = 1.0, 0.0, 0
        image = run.compute()
        self.residual = put_rows(self.residual, image - x)
        return run.head(image)
