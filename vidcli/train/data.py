"""Training data for every trainer: which rows each micro-step reads, and a loader that reads ahead.

`StepRows` is the plan. Rank r's rows at micro-step i are a pure function of (seed, r, i), so
resuming at step i reads exactly what an uninterrupted run would have read there:

- without buckets every epoch is a seeded permutation of the rows and rank r of W reads its own
  slice of each global batch (`rows_for_step`);
- with `[data] buckets` each step is one batch of one bucket (one clip shape, the bucket's own
  batch size) from `BucketBatchSampler` on this rank: epoch e is the sampler's epoch e, and step i
  is batch i mod N of epoch i div N, found by loading the sampler state (epoch, consumed), so
  resuming needs nothing but the step index.

`StepLoader` serves `batch_at(i)`. With `[data] workers > 0` a DataLoader's worker processes
decode steps i+1, i+2, ... while step i trains. Every step is fetched by its index, so workers
change the speed, never the content; the step's own randomness (dropout coins, noise) is drawn in
the training process from `step_generator`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vidcli.data.buckets import BucketBatchSampler, BucketConfig
from vidcli.errors import UsageError
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
        shuffle = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        rows.append(int(torch.randperm(num_rows, generator=shuffle)[offset]))
    return rows


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s shuffle: one for all ranks, its own stream of `seeds`."""
    return seeds.step_seed(seed, 0, epoch, seeds.DATA_ORDER)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A generator for a step's own randomness (noise, timesteps, dropout coins).

    Its stream is distinct from the global RNG the loop seeds for the same step (`seeds.BATCH`).
    """
    return torch.Generator().manual_seed(seeds.step_seed(seed, rank, step, seeds.BATCH))


class StepRows:
    """The rows `rank` reads at each micro-step (one bucket's, with buckets); see the module doc."""

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        buckets: Sequence[str | None] | None = None,
        batch_sizes: Mapping[str, int] | None = None,
    ):
        if num_rows < 1:
            raise UsageError("[data] has no rows to train on")
        self.num_rows, self.batch_size = num_rows, batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self.sampler = None
        self._epoch: tuple[int, list[list[int]]] | None = None
        if batch_sizes is not None:
            if buckets is None:
                raise UsageError("[data] buckets: the data has no bucket column")
            self.sampler = BucketBatchSampler(
                buckets, batch_sizes, rank, world, seed=seed, epoch_seed=epoch_seed
            )
            self.steps_per_epoch = len(self._batches_of_epoch(0))
            if self.steps_per_epoch == 0:
                counts = {b: list(buckets).count(b) for b in dict.fromkeys(buckets) if b}
                raise UsageError(
                    f"[data] buckets: no bucket holds a full batch for {world} rank(s) "
                    f"(clips per bucket: {counts}); lower the batch sizes or add clips"
                )

    def __call__(self, index: int) -> list[int]:
        """The rows of micro-step `index`."""
        if self.sampler is None:
            return rows_for_step(
                index, self.batch_size, self.rank, self.world, self.num_rows, self.seed
            )
        epoch, position = divmod(index, self.steps_per_epoch)
        return self._batches_of_epoch(epoch)[position]

    def _batches_of_epoch(self, epoch: int) -> list[list[int]]:
        # One epoch's batches are kept: consecutive steps read the same epoch.
        if self._epoch is None or self._epoch[0] != epoch:
            self.sampler.load_state_dict({"seed": self.seed, "epoch": epoch, "consumed": 0})
            self._epoch = (epoch, list(self.sampler))
        return self._epoch[1]


def step_rows(
    dataset: Any, buckets: BucketConfig | None, batch_size: int, rank: int, world: int, seed: int
) -> StepRows:
    """`StepRows` of a VideoDataset or LatentDataset (both list each row's `buckets`).

    With a bucket config every step is one bucket's batch of that bucket's size; without one,
    `batch_size` rows of any bucket, which must then all have one shape.
    """
    if buckets is not None:
        sizes = buckets.batch_sizes()
        return StepRows(len(dataset), batch_size, rank, world, seed, dataset.buckets, sizes)
    kinds = sorted(set(dataset.buckets) - {None})
    if len(kinds) > 1:
        raise UsageError(
            f"the data holds {len(kinds)} buckets (clip shapes, e.g. {kinds[:2]}); "
            "set [data] buckets to train on them, or prepare the data without buckets"
        )
    return StepRows(len(dataset), batch_size, rank, world, seed)


class StepBatches:
    """`fetch(i)` for `StepLoader`: the items of step i's rows, tensors stacked, the rest listed.

    A plain object (a dataset and a `StepRows`), so worker processes can receive it by pickle too.
    """

    def __init__(self, dataset: Any, rows: StepRows):
        self.dataset, self.rows = dataset, rows

    def __call__(self, index: int) -> dict[str, Any]:
        items = [self.dataset[r] for r in self.rows(index)]
        return {
            key: torch.stack(values) if isinstance(values[0], torch.Tensor) else values
            for key in items[0]
            for values in [[item[key] for item in items]]
        }


class _Steps(Dataset):
    """A map-style dataset whose item i is the whole batch of micro-step i."""

    def __init__(self, fetch: Callable[[int], Any]):
        self.fetch = fetch

    def __getitem__(self, index: int) -> Any:
        return self.fetch(index)


class StepLoader:
    """`fetch(i)` for micro-steps i, i+1, ...: read ahead by `workers` processes when > 0.

    Asking for another index than the next one (a resume, a restart) starts a fresh pass from
    there; the batches are the same either way.
    """

    def __init__(self, fetch: Callable[[int], Any], workers: int, prefetch: int = 2):
        self.fetch, self.workers, self.prefetch = fetch, workers, prefetch
        self._pass: Any = None
        self._next = -1

    def __call__(self, index: int) -> Any:
        if self.workers == 0:
            return self.fetch(index)
        if self._pass is None or index != self._next:
            loader = DataLoader(
                _Steps(self.fetch),
                batch_size=None,  # items are whole batches already
                sampler=itertools.count(index),
                num_workers=self.workers,
                prefetch_factor=self.prefetch,
            )
            self._pass = iter(loader)
        self._next = index + 1
        return next(self._pass)
