"""EasyCache (Zhou et al., arXiv 2507.02860): runtime-adaptive reuse of the DiT's transformation
vector, no offline profiling. Compute is allocated per sample: each prompt spends its own error
budget, and only the prompts over budget run the full DiT in a batched call.

What it reuses: the stack's transformation vector Δ = (last block's image output) - (embedded
input), kept per (CFG branch, prompt) and per evaluation stream; a reused step returns x + Δ.

Rule per prompt (all its CFG rows together; ‖·‖ the L1 norm):
- at a full step c after an earlier full step p, the transformation rate
  k = (‖o_c - o_p‖ / ‖o_p‖) / (‖x_c - x_p‖ / ‖x_p‖), o the stack output, x its input;
- at every later step t the estimated output change k · ‖x_t - x_{t-1}‖ / ‖x_{t-1}‖ is added to
  the accumulator E; Δ is reused while E < τ, else the prompt is computed and E = 0.
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


def sample_norms(t: torch.Tensor, branches: int) -> torch.Tensor:
    """L1 norm of each prompt's rows over all branches: (branches·N, ...) -> (N,)."""
    return t.abs().flatten(1).sum(1).view(branches, -1).sum(0)


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
        self.rate: torch.Tensor | None = None
        """(N,) transformation rate k of each prompt (None before its second full step)."""
        self.budget: torch.Tensor | None = None
        """(N,) accumulated estimated output change E since each prompt's last full step."""
        self.full_steps: torch.Tensor | None = None
        """(N,) full evaluations of each prompt so far."""

    def __call__(self, run: StepRun) -> torch.Tensor:
        x, n, nb, B = run.embedded.x, run.rows, len(run.branches), run.batch
        if self.budget is None:
            self.budget, self.rate = x.new_zeros(n), x.new_zeros(n)
            self.full_steps = torch.zeros(n, dtype=torch.long)
        compute = torch.ones(n, dtype=torch.bool)
        if run.step >= WARMUP_STEPS and self.previous_x.value is not None:
            before = self.previous_x.read(B)
            change = sample_norms(x - before, nb) / sample_norms(before, nb).clamp_min(1e-12)
            self.budget += self.rate * change
            compute = (self.budget >= self.tau) | (self.full_steps < 2)
        self.previous_x.write(torch.arange(B), x, B)
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
        """The full DiT on prompts `samples`, updating their Δ, rate and budget."""
        sub, rows, index = sub_run(run, samples), sample_rows(run, samples), torch.tensor(samples)
        x, nb = sub.embedded.x, len(run.branches)
        o = sub.compute()
        charge(run, sub)
        had = (self.full_steps[index] > 0).to(x.device)
        if had.any():
            o_p, x_p = self.full_o.read(run.batch)[rows], self.full_x.read(run.batch)[rows]
            out_change = sample_norms(o - o_p, nb) / sample_norms(o_p, nb).clamp_min(1e-12)
            in_change = sample_norms(x - x_p, nb) / sample_norms(x_p, nb).clamp_min(1e-12)
            rate = out_change / in_change.clamp_min(1e-12)
            self.rate[index] = torch.where(had, rate, self.rate[index])
        self.full_o.write(rows, o, run.batch)
        self.full_x.write(rows, x, run.batch)
        self.delta.write(rows, o - x, run.batch)
        self.budget[index] = 0.0
        self.full_steps[index] += 1
        return o
