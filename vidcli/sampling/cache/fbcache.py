"""First-Block Cache (ParaAttention; diffusers `FirstBlockCacheConfig`).

Every step runs block 0 and compares its image residual u_n with the one stored at the last fully
computed step: if δ(u_n, u_ref) < ε the remaining blocks are replaced by the tail residual (last
block's output minus block 0's output) stored at that step. u_ref changes only on full steps, so
drift accumulates until it crosses ε. Only the first step is forced.
"""

from __future__ import annotations

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows


class FirstBlockCache(CachePolicy):
    name = "fbcache"

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.reference: torch.Tensor | None = None
        self.tail: torch.Tensor | None = None

    def __call__(self, run: StepRun) -> torch.Tensor:
        start = run.start()
        first = run.run_blocks(start, 0, 1)
        u = first.image - start.image
        reference = None if self.reference is None else take_rows(self.reference, run.batch)
        if reference is not None and run.relative_l1(u, reference) < self.threshold:
            run.kind = "partial"
            return run.head(first.image + take_rows(self.tail, run.batch))
        image = run.run_blocks(first, 1).image
        self.reference = put_rows(self.reference, u)
        self.tail = put_rows(self.tail, image - first.image)
        return run.head(image)
