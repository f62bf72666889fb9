"""Training data for both trainers: which rows each step reads.

Rows for a step are a pure function of (seed, rank, step): every epoch is a seeded permutation,
rank r of W reads its own slice of each global batch, so resuming at step s reads exactly what an
uninterrupted run would have read at step s.
"""

from __future__ import annotations

import torch

from vidcli.train import seeds


def rows_for_step(
    step: int, batch: int, rank: int, world: int, num_rows: int, seed: int
) -> list[int]:
    """The dataset rows rank `rank` reads at `step` (a global batch is `batch * world` rows)."""
    global_batch = batch * world
    first = step * global_batch + rank * batch
    rows = []
    for position in range(first, first + batch):
        epoch, offset = divmod(position, num_rows)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch))
        rows.append(int(order[offset]))
    return rows


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A generator for a step's own randomness (noise, timesteps, dropout coins).

    Its stream is distinct from the global RNG the loop seeds for the same step (`seeds.BATCH`).
    """
    return torch.Generator().manual_seed(seeds.step_seed(seed, rank, step, seeds.BATCH))
