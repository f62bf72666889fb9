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
from collections.abc import Sequence

import torch

from vidcli.sampling.cache.base import CachePolicy, periodic_full_step
from vidcli.sampling.cache.hooks import StepRun
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, map_value

WARMUP_STEPS = 3


def branch_rows(value: Value, index: int, rows: int) -> Value:
    """The rows of CFG branch `index` (N = `rows` per branch) of a tensor or tuple of tensors."""
    return map_value(lambda t: t[index * rows : (index + 1) * rows], value)


def cat_rows(values: Sequence[Value]) -> Value:
    """Branch values stacked back along the batch, in the call's branch order."""
    return map_value(lambda *parts: torch.cat(parts), *values)


def taylor_weights(offset: int, terms: int) -> list[float]:
    """k^i / i! for i < terms: the Taylor series' weights `offset` steps past the last full step."""
    return [offset**i / math.factorial(i) for i in range(terms)]


class BranchClocks:
    """The last two full steps of each CFG branch.

    Under guidance oscillation a scale-1 step evaluates the conditional rows only, so the
    negative-prompt rows are refreshed at other steps than the conditional ones: every branch
    counts its own steps since its last full step and its own gap between full steps.
    """

    def __init__(self) -> None:
        self.steps: dict[str, tuple[int, int]] = {}

    def knows(self, branches: Sequence[str]) -> bool:
        return all(b in self.steps for b in branches)

    def tick(self, branches: Sequence[str], step: int) -> None:
        for b in branches:
            self.steps[b] = (step, self.steps.get(b, (-1, -1))[0])

    def since_full(self, branch: str, step: int) -> int:
        return step - self.steps[branch][0]

    def gap(self, branch: str) -> int:
        """Steps between the branch's last two full steps (-1 after its first)."""
        last, previous = self.steps[branch]
        return last - previous if previous >= 0 else -1


def updated_factors(old: list[Value] | None, value: Value, gap: int, order: int) -> list[Value]:
    """Δ⁰ = value and the divided differences Δ^i = (Δ^(i-1) - old Δ^(i-1)) / gap."""
    new = [value]
    if old is not None and gap > 0:
        for i in range(min(order, len(old))):
            new.append(map_value(lambda a, b: (a - b) / gap, new[i], old[i]))
    return new


def forecast(factors: list[Value], offset: int) -> Value:
    weights = taylor_weights(offset, len(factors))
    return map_value(lambda *ds: sum(w * d for w, d in zip(weights, ds, strict=True)), *factors)


class TaylorSeer(CachePolicy):
    name = "taylorseer"

    def __init__(self, interval: int, order: int = 1):
        self.interval, self.order = interval, order
        self.reset()

    def reset(self) -> None:
        self.factors: dict[str, dict[Key, list[Value]]] = {}
        """Per CFG branch, per module: [Δ⁰, Δ¹, ...] over that branch's N rows."""
        self.clocks = BranchClocks()

    def __call__(self, run: StepRun) -> torch.Tensor:
        branches, n = run.branches, run.rows
        full = not self.clocks.knows(branches) or periodic_full_step(
            run.step, self.interval, WARMUP_STEPS
        )
        if full:
            self.clocks.tick(branches, run.step)

            def provide(key: Key, compute) -> Value:
                value = compute()
                for i, b in enumerate(branches):
                    table = self.factors.setdefault(b, {})
                    chunk = branch_rows(value, i, n)
                    table[key] = updated_factors(
                        table.get(key), chunk, self.clocks.gap(b), self.order
                    )
                return value

        else:
            run.kind = "skipped"

            def provide(key: Key, compute) -> Value:
                return cat_rows(
                    [
                        forecast(self.factors[b][key], self.clocks.since_full(b, run.step))
                        for b in branches
                    ]
                )

        image = run.compute(lambda i: ModuleHook(i, provide))
        return run.head(image)


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
        self.factors: dict[str, list[Value]] = {}
        """Per CFG branch: [Δ⁰, Δ¹, ...] of the stack residual over that branch's N rows."""
        self.clocks = BranchClocks()

    def __call__(self, run: StepRun) -> torch.Tensor:
        x, branches, n = run.embedded.x, run.branches, run.rows
        if self.clocks.knows(branches) and not periodic_full_step(
            run.step, self.interval, WARMUP_STEPS
        ):
            run.kind = "skipped"
            residual = cat_rows(
                [forecast(self.factors[b], self.clocks.since_full(b, run.step)) for b in branches]
            )
            return run.head(x + residual)
        self.clocks.tick(branches, run.step)
        image = run.compute()
        residual = image - x
        for i, b in enumerate(branches):
            chunk = branch_rows(residual, i, n)
            self.factors[b] = updated_factors(
                self.factors.get(b), chunk, self.clocks.gap(b), self.order
            )
        return run.head(image)
