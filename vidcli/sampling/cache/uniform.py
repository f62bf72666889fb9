"""The control: reuse the DiT's whole output on a fixed schedule, with no intelligence at all.

Step i is computed when i % K == 0 or i is the last step; otherwise the last computed velocity is
returned unchanged. A caching method is only worth having if it beats this at equal cost.
"""

from __future__ import annotations

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows


class UniformCache(CachePolicy):
    name = "uniform"

    def __init__(self, interval: int):
        self.interval = interval
        self.reset()

    def reset(self) -> None:
        self.output: torch.Tensor | None = None

    def __call__(self, run: StepRun) -> torch.Tensor:
        if self.output is None or run.step % self.interval == 0 or run.last:
            out = run.head(run.compute())
            self.output = put_rows(self.output, out)
            return out
        run.kind = "skipped"
        return take_rows(self.output, run.batch)
