"""EasyCache (Zhou et al., arXiv 2507.02860): runtime-adaptive reuse of the DiT's transformation
vector, no offline profiling. Compute is allocated per sample: each prompt spends its own error
budget, and only the prompts over budget run the full DiT in a batched call.

What it reuses: the stack's transformation vector Δ = (last block's image output) - (embedded
input), kept per (CFG branch, prompt) and per evaluation stream; a reused step returns x + Δ.

Rule per row (one prompt in one CFG branch; ‖·‖ the L1 norm over the row):
- at a full step c after an earlier full step p, the transformation rate
  k = (‖o_c - o_p‖ / ‖o_p‖) / (‖x_c - x_p‖ / ‖x_p‖), o the stack output, x its input;
- at every later call t the estimated output change k · ‖x_t - x_prev‖ / ‖x_prev‖ (x_prev the
  row's input at its previous call) is added to its accumulator E; a prompt reuses Δ while all
  its rows in the call have E < τ, else all its rows are computed and their E = 0.
The first 3 steps are full (k needs two full steps), so τ = 0 computes every step.

Published EasyCache differs: it measures input and output on the latent and the velocity, uses a
warm-up of a fraction of the steps and runs per call (the whole batch decides together).
"""

from __future__ import annotations

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun
from vidcli.sampling.cache.samples import charge, merge_rows, sample_rows, sub_run

WARMUP_STEPS = 3


def row_norms(t: torch.Tensor) -> torch.Tensor:
    """L1 norm of each row: (B, ...) -> (B,)."""
    return t.abs().flatten(1).sum(1)


def relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a - b‖ / ‖b‖ per row."""
    return row_norms(a - b) / row_norms(b).clamp_min(1e-12)


class _Rows:
    """A per-row tensor state over the widest CFG layout seen; a call reads its leading rows."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def read(self, rows: int) -> torch.Tensor:
        return self.value[:rows]

    def write(self, index: torch.Tensor, values: torch.Tensor, rows: int) -> None:
        if self.value is None or self.value.shape[0] < rows:
            grown = values.new_zeros((rows, *values.shape[1:]))
            if self.value is not None:
                grown[: self.value.shape[0]] = self.value
            self.value = grown
        self.value[index] = values


class EasyCache(CachePolicy):
    name = "easycache"

    def __init__(self, tau: float):
        self.tau = tau
        self.reset()

    def reset(self) -> None:
        self.previous_x, self.full_x, self.full_o, self.delta = _Rows(), _Rows(), _Rows(), _Rows()
        self.rate, self.budget, self.full_steps = _Rows(), _Rows(), _Rows()
        """Per row (CFG branch x prompt): transformation rate k, accumulated estimate E since the
        row's last full step, and the row's full evaluations so far. Rows, not prompts: under
        guidance oscillation a conditional-only step refreshes the conditional rows only."""

    def __call__(self, run: StepRun) -> torch.Tensor:
        x, n, B = run.embedded.x, run.rows, run.batch
        everything = torch.arange(B)
        if self.previous_x.value is None or self.previous_x.value.shape[0] < B:
            # a new branch: its rows start with no history (its prompts are computed)
            width = B if self.budget.value is None else self.budget.value.shape[0]
            fresh = everything[width:]
            self.budget.write(fresh, x.new_zeros(len(fresh)), B)
            self.rate.write(fresh, x.new_zeros(len(fresh)), B)
            self.full_steps.write(fresh, x.new_zeros(len(fresh)), B)
            self.previous_x.write(fresh, x[fresh], B)
        budget = self.budget.read(B) + self.rate.read(B) * relative(x, self.previous_x.read(B))
        self.budget.write(everything, budget, B)
        self.previous_x.write(everything, x, B)
        over = (budget >= self.tau) | (self.full_steps.read(B) < 2) | (run.step < WARMUP_STEPS)
        compute = over.view(-1, n).any(0)
        computed = [s for s in range(n) if compute[s]]
        reused = [s for s in range(n) if not compute[s]]
        parts = []
        if reused:
            rows = sample_rows(run, reused)
            parts.append((rows, x[rows] + self.delta.read(B)[rows]))
        if computed:
            parts.append((sample_rows(run, computed), self._compute(run, computed)))
        run.kind = "full" if not reused else "partial" if computed else "skipped"
        return run.head(merge_rows(parts, B))

    def _compute(self, run: StepRun, samples: list[int]) -> torch.Tensor:
        """The full DiT on prompts `samples`, updating their rows' Δ, rate and budget."""
        sub, rows = sub_run(run, samples), sample_rows(run, samples)
        x, B = sub.embedded.x, run.batch
        o = sub.compute()
        charge(run, sub)
        had = self.full_steps.read(B)[rows] > 0
        if had.any():
            o_p, x_p = self.full_o.read(B)[rows], self.full_x.read(B)[rows]
            rate = relative(o, o_p) / relative(x, x_p).clamp_min(1e-12)
            self.rate.write(rows, torch.where(had, rate, self.rate.read(B)[rows]), B)
        self.full_o.write(rows, o, B)
        self.full_x.write(rows, x, B)
        self.delta.write(rows, o - x, B)
        self.budget.write(rows, torch.zeros_like(rows, dtype=x.dtype), B)
        self.full_steps.write(rows, self.full_steps.read(B)[rows] + 1, B)
        return o
