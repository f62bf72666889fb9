"""AdaCache (Kahatapitiya et al., arXiv 2411.02397): a content-adaptive schedule. At each computed
step the change of a mid-depth residual since the previous computed step, divided by the gap,
picks from a codebook how many steps to reuse next; Motion Regularisation (MoReg) scales that
change by how much the video moves, so moving content is computed more often.

Mapping to the MMDiT (shared/reference/caching-methods.md §2): the authors reuse every block's own
residuals with one schedule common to all blocks; summed over the stack those residuals telescope
to the stack residual, so a reused step here is input + last stack residual (same numbers, one
add). The probe is the image-token residual of the middle block (the authors probe a mid-depth
temporal-attention residual; our blocks attend jointly). Codebook: the 30-step "fast" one,
thresholds θ·(1, 2, 3, 4, 5) with rates (6, 5, 4, 3, 2), else 1, rates scaled by N/30. Always
computed: steps 0, 1, N-2, N-1. MoReg as in the authors' code (stride-1 frame differences, score
normalised then raised to the 8th power, plus |10·gradient|, applied between 10 % and 90 % of the
steps; off for a single latent frame, which has no motion to measure), except that the
normaliser is the first score measured in that window instead of Open-Sora's constant 0.385,
which does not transfer to another model.
"""

from __future__ import annotations

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, relative_l1, take_rows

RATES_30_STEPS = (6, 5, 4, 3, 2)
MOREG_EXPONENT, MOREG_GRADIENT = 8.0, 10.0
MOREG_WINDOW = (0.1, 0.9)


def motion_score(residual: torch.Tensor, frames: int) -> float:
    """‖p[i+1] - p[i]‖₁ / (‖p[1:]‖₁ + ‖p[:-1]‖₁) over latent frames; residual (B, L_img, D)."""
    if frames < 2:
        return 0.0
    p = residual.reshape(residual.shape[0], frames, -1)
    later, earlier = p[:, 1:], p[:, :-1]
    return ((later - earlier).abs().sum() / (later.abs().sum() + earlier.abs().sum())).item()


class AdaCache(CachePolicy):
    name = "adacache"

    def __init__(self, threshold: float, num_steps: int, frames: int = 1, moreg: bool = True):
        self.threshold = threshold
        # MoReg measures motion between latent frames: one frame has none, its score is 0 and
        # would scale every distance to 0 (the longest reuse whatever the threshold).
        self.frames, self.moreg = frames, moreg and frames >= 2
        scale = num_steps / 30
        self.rates = tuple(max(1, round(r * scale)) for r in RATES_30_STEPS)
        self.reset()

    def reset(self) -> None:
        self.residual: torch.Tensor | None = None
        self.probe: torch.Tensor | None = None
        self.last_computed = -1
        self.next_compute = 0
        self.motion_norm: float | None = None
        self.motion_prev = 1.0

    def rate(self, distance: float) -> int:
        """Steps until the next computation for a (regularised) distance."""
        for i, rate in enumerate(self.rates):
            if distance < self.threshold * (i + 1):
                return rate
        return 1

    def __call__(self, run: StepRun) -> torch.Tensor:
        n, N = run.step, run.num_steps
        forced = n in (0, 1, N - 2, N - 1) or self.residual is None
        x = run.embedded.x
        if not forced and n < self.next_compute:
            run.kind = "skipped"
            return run.head(x + take_rows(self.residual, run.batch))
        probe_at = run.num_blocks // 2
        image = run.run_blocks(run.start(), capture=(probe_at,)).image
        probe = run.captured.pop(probe_at)
        gap = n - self.last_computed
        if self.probe is not None:
            distance = relative_l1(probe, take_rows(self.probe, run.batch)) / gap
            distance *= self.motion_factor(probe, n, N, gap)
            self.next_compute = n + self.rate(distance)
        else:
            self.next_compute = n + 1
        self.residual = put_rows(self.residual, image - x)
        self.probe, self.last_computed = put_rows(self.probe, probe), n
        return run.head(image)

    def motion_factor(self, probe: torch.Tensor, n: int, N: int, gap: int) -> float:
        """MoReg: m̂ + |10·(m̂ - m̂_prev)/gap| inside the window, 1 outside."""
        if not self.moreg or not (MOREG_WINDOW[0] * N <= n <= MOREG_WINDOW[1] * N):
            self.motion_prev = 1.0
            return 1.0
        score = motion_score(probe, self.frames)
        if self.motion_norm is None:
            self.motion_norm = score or 1.0
        m = (score / self.motion_norm) ** MOREG_EXPONENT
        factor = m + abs(MOREG_GRADIENT * (m - self.motion_prev) / gap)
        self.motion_prev = m
        return factor
