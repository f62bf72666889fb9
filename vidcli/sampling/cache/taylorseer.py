"""TaylorSeer (Liu et al., ICCV'25, arXiv 2503.06923): forecast module outputs instead of copying
them. At a full step every module's output F and its finite differences over the step gap are
stored (Δ⁰ = F, Δ¹ = (Δ⁰ - Δ⁰_prev)/gap, ... up to `order`); a predicted step returns
Σ_i Δ^i·k^i/i! with k = steps since the last full step, re-gated with the current conditioning.

Modules forecast (as TaylorSeer-FLUX): each double block's attention of both streams and its two
MLPs, each single block's linear2 output. Schedule: the first 3 steps full, then every K-th
(diffusers' defaults: order 1, K 5, warm-up 3; shared/reference/caching-methods.md §7).
"""

from __future__ import annotations

import math

import torch

from vidcli.sampling.cache.base import CachePolicy, periodic_full_step
from vidcli.sampling.cache.hooks import StepRun, put_rows, take_rows
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, map_value

WARMUP_STEPS = 3


class TaylorSeer(CachePolicy):
    name = "taylorseer"

    def __init__(self, interval: int, order: int = 1):
        self.interval, self.order = interval, order
        self.reset()

    def reset(self) -> None:
        self.factors: dict[Key, list[Value]] = {}
        self.last_full = -1
        self.previous_full = -1

    def __call__(self, run: StepRun) -> torch.Tensor:
        full = not self.factors or periodic_full_step(run.step, self.interval, WARMUP_STEPS)
        if full:
            self.previous_full, self.last_full = self.last_full, run.step
            provide = self._record
        else:
            run.kind = "skipped"
            offset = run.step - self.last_full
            weights = [offset**i / math.factorial(i) for i in range(self.order + 1)]

            def provide(key: Key, compute) -> Value:
                terms = take_rows(self.factors[key], run.batch)
                return map_value(
                    lambda *ds: sum(w * d for w, d in zip(weights, ds, strict=False)), *terms
                )

        image = run.compute(lambda i: ModuleHook(i, provide))
        return run.head(image)

    def _record(self, key: Key, compute) -> Value:
        """Compute the module and update its divided differences."""
        value = compute()
        stored = self.factors.get(key)
        new = [value]
        if stored is not None and self.previous_full >= 0:
            old = take_rows(stored, _rows(value))
            gap = self.last_full - self.previous_full
            for i in range(min(self.order, len(old))):
                new.append(map_value(lambda a, b: (a - b) / gap, new[i], old[i]))
        # Rows of CFG branches absent from this step keep their older factors.
        stored = stored or []
        self.factors[key] = [
            put_rows(stored[i] if i < len(stored) else None, d) for i, d in enumerate(new)
        ]
        return value


def _rows(value: Value) -> int:
    return (value[0] if isinstance(value, tuple) else value).shape[0]


class TaylorSeerLite(CachePolicy):
    """TaylorSeer on the whole stack: forecast the image residual of all blocks (last block's
    output minus the embedded input) and add it to the fresh input, so a predicted step costs the
    embedding and the final layer only. diffusers' `use_lite_mode` forecasts the output
    projection instead; ParaAttention forecasts the First-Block-Cache residual the same way."""

    name = "taylorseer-lite"

    def __init__(self, interval: int, order: int = 1):
        self.interval, self.order = interval, order
        self.reset()

    def reset(self) -> None:
        self.factors: list[torch.Tensor] = []
        self.last_full = self.previous_full = -1

    def __call__(self, run: StepRun) -> torch.Tensor:
        x = run.embedded.x
        if self.factors and not periodic_full_step(run.step, self.interval, WARMUP_STEPS):
            run.kind = "skipped"
            k = run.step - self.last_full
            terms = take_rows(self.factors, run.batch)
            residual = sum(d * k**i / math.factorial(i) for i, d in enumerate(terms))
            return run.head(x + residual)
        self.previous_full, self.last_full = self.last_full, run.step
        image = run.compute()
        residual = image - x
        new = [residual]
        if self.factors:
            old = take_rows(self.factors, run.batch)
            gap = self.last_full - self.previous_full
            for i in range(min(self.order, len(old))):
                new.append((new[i] - old[i]) / gap)
        stored = self.factors
        self.factors = [
            put_rows(stored[i] if i < len(stored) else None, d) for i, d in enumerate(new)
        ]
        return run.head(image)
