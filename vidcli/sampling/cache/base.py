"""The policy interface every caching method implements, and the periodic schedule several share."""

from __future__ import annotations

import copy

import torch

from vidcli.sampling.cache.hooks import StepRun


class CachePolicy:
    """Decides, at each model call, what to compute and what to reuse.

    `__call__` returns the velocity tokens (B, L_img, C·p²) of the call and sets `run.kind`.
    State lives in the policy and is cleared by `reset()` at the start of every sampling run.
    """

    name = "none"

    def reset(self) -> None:
        """Forget everything cached (a new video starts)."""

    def fork(self) -> CachePolicy:
        """A policy with the same settings and its own state, for another evaluation stream of
        the run (rf2's midpoints): each stream sees steps 0..N-1 once, at its own times."""
        twin = copy.deepcopy(self)
        twin.reset()
        return twin

    def __call__(self, run: StepRun) -> torch.Tensor:
        return run.head(run.compute())


def periodic_full_step(step: int, interval: int, warmup: int) -> bool:
    """Full steps of ToCa / TaylorSeer: the first `warmup` steps, then every `interval`-th step
    counted from the last warm-up step (interval 1 = every step)."""
    return step < warmup or (step - (warmup - 1)) % interval == 0
