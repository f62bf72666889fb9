"""Per-sample compute: run the DiT on some prompts of a call and not on others.

A call holds B = branches·N rows, branch-major (row b·N + s is prompt s of CFG branch b). The
per-sample policies (SpeCa, EasyCache) decide for each prompt s whether it needs a full
evaluation, and compute only those prompts' rows, in every branch of the call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidcli.models.mmdit.model import Embedded
from vidcli.sampling.cache.hooks import StepRun


def sample_rows(run: StepRun, samples: Sequence[int]) -> torch.Tensor:
    """The row indices of prompts `samples` in every branch of the call, branch-major."""
    rows = [b * run.rows + s for b in range(len(run.branches)) for s in samples]
    return torch.tensor(rows, dtype=torch.long, device=run.embedded.x.device)


def _rows(t: torch.Tensor, index: torch.Tensor, batch: int) -> torch.Tensor:
    # RoPE tables may be shared by all rows (leading dim 1): those are kept whole.
    return t[index] if t.shape[0] == batch else t


def sub_run(run: StepRun, samples: Sequence[int]) -> StepRun:
    """A StepRun over prompts `samples` only (same step and branches, len(samples) per branch)."""
    index, b = sample_rows(run, samples), run.batch
    e = run.embedded
    embedded = Embedded(*(_rows(t, index, b) for t in e))
    sub = StepRun(run.model, embedded, run.step, run.num_steps, len(samples), run.branches)
    return sub


def merge_rows(parts: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: int) -> torch.Tensor:
    """(row indices, values) pieces written into one (batch, ...) tensor."""
    first = parts[0][1]
    out = first.new_empty((batch, *first.shape[1:]))
    for index, values in parts:
        out[index] = values
    return out


def charge(run: StepRun, sub: StepRun) -> None:
    """Add a sub-run's block work to the call's, scaled by its share of the rows: the call's
    `work` counts block-equivalents of the whole batch."""
    run.work += sub.work * sub.batch / run.batch
