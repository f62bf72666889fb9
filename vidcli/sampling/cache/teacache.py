"""TeaCache (Liu et al., CVPR'25, arXiv 2411.19108): skip the whole stack while the rescaled
relative change of block 0's timestep-modulated input, accumulated since the last computed step,
stays below the threshold; a skipped step adds the last computed stack residual to its fresh input.

Rule (paper Eq. 4-7; shared/reference/caching-methods.md §1): d = δ(m_n, m_{n-1}) over the whole
batch, acc += f(d) with f a degree-4 polynomial (coefficients highest power first, as np.poly1d),
compute when acc >= θ (then acc = 0); the first and last steps are always computed; m_{n-1} is
updated on every step. Deviation: f(d) is clamped at 0 (a change is never negative), so θ = 0
computes every step whatever the fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows

# f(x) = x: the rescale used before a model is calibrated.
IDENTITY_COEFFICIENTS = (0.0, 0.0, 0.0, 1.0, 0.0)


def rescale(coefficients: Sequence[float], x: float) -> float:
    """Evaluate the polynomial (highest power first) at x, clamped at 0."""
    y = 0.0
    for a in coefficients:
        y = y * x + a
    return max(y, 0.0)


@contextmanager
def on_device(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """`module`'s weights on `device` inside the block, back where they were after it.

    Block streaming (offload "blocks") keeps blocks on the CPU and moves each onto the device
    only inside its own forward; the indicator reads block 0's modulation outside that forward.
    """
    home = next(module.parameters()).device
    if home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


def indicator(run: StepRun) -> torch.Tensor:
    """Block 0's modulated image input m_n (B, L_img, D); for a model without double-stream
    blocks, the first single block's modulated sequence."""
    e, m = run.embedded, run.model
    if len(m.double_blocks):
        block = m.double_blocks[0]
        with on_device(block, e.x.device):
            return block.modulated_image(e.x, e.vec)
    block = m.single_blocks[0]
    with on_device(block, e.x.device):
        shift, scale = block.modulation(e.vec)[:2]
    seq = torch.cat((e.ctx, e.x), dim=1)
    return (1 + scale) * torch.nn.functional.layer_norm(seq, seq.shape[-1:], eps=1e-6) + shift


class TeaCache(CachePolicy):
    name = "teacache"

    def __init__(self, threshold: float, coefficients: Sequence[float] = IDENTITY_COEFFICIENTS):
        self.threshold = threshold
        self.coefficients = tuple(float(c) for c in coefficients)
        self.reset()

    def reset(self) -> None:
        self.previous: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.accumulated = 0.0

    def __call__(self, run: StepRun) -> torch.Tensor:
        m = indicator(run)
        compute = self.previous is None or self.residual is None or run.step == 0 or run.last
        if not compute:
            change = run.relative_l1(m, take_rows(self.previous, run.batch))
            self.accumulated += rescale(self.coefficients, change)
            compute = self.accumulated >= self.threshold
        self.previous = put_rows(self.previous, m)
        x = run.embedded.x
        if compute:
            self.accumulated = 0.0
            image = run.compute()
            self.residual = put_rows(self.residual, image - x)
        else:
            run.kind = "skipped"
            image = x + take_rows(self.residual, run.batch)
        return run.head(image)
