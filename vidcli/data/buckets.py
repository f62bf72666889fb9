"""Buckets: group clips by resolution, frame count and aspect ratio so a batch has one shape.

A bucket config maps a resolution name to frame counts, each with a keep probability and a batch
size, as it comes out of TOML:

    {"256px": {"1": [1.0, 32], "33": [0.5, 4]}, "aspect_ratios": ["9:16", "1:1", "16:9"]}

A clip goes to the largest resolution it covers without upscaling, then the longest frame count
it holds whose coin (keep probability) comes up; a failed coin falls through to the next smaller
frame count. Bucket ids read "256px-33-16:9".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from vidcli.errors import UsageError

DEFAULT_ASPECT_RATIOS: tuple[str, ...] = ("9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9")
"""Width:height, as videos are named: "16:9" is landscape, "9:16" portrait."""

_RESOLUTION = re.compile(r"^(\d+)(px|p)$")


@dataclass(frozen=True)
class FrameBucket:
    """One frame count of a resolution."""

    keep_prob: float
    """Probability that a clip long enough for this frame count is put here (else falls through)."""
    batch_size: int
    """Clips per batch (per rank) in this bucket."""


@dataclass(frozen=True)
class BucketConfig:
    """Resolutions -> frame counts -> (keep probability, batch size), plus aspect ratios."""

    resolutions: dict[str, dict[int, FrameBucket]]
    """Resolution name ("256px" = 256x256 pixels of area, "720p" = 1280x720) -> frame buckets."""
    aspect_ratios: tuple[str, ...] = DEFAULT_ASPECT_RATIOS
    """Width:height ratios; a clip takes the nearest one (in log ratio) and is centre-cropped."""
    multiple: int = 32
    """Bucket heights and widths are multiples of this (the autoencoder's spatial compression)."""
    areas: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "areas", {n: resolution_area(n) for n in self.resolutions})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "[data.buckets]") -> BucketConfig:
        """Parse and validate the TOML form; errors name the offending key."""
        raw = dict(raw)
        ratios = raw.pop("aspect_ratios", DEFAULT_ASPECT_RATIOS)
        multiple = raw.pop("multiple", 32)
        if not isinstance(multiple, int) or multiple < 1:
            raise UsageError(f"{where}: 'multiple' must be a positive integer, got {multiple!r}")
        if not isinstance(ratios, (list, tuple)) or not ratios:
            raise UsageError(f"{where}: 'aspect_ratios' must be a non-empty list like ['16:9']")
        for ratio in ratios:
            parse_ratio(ratio, where)
        if not raw:
            raise UsageError(
                f"{where}: no resolutions; expected e.g. {{'256px': {{'1': [1.0, 32]}}}}"
            )
        resolutions: dict[str, dict[int, FrameBucket]] = {}
        for name, frames in raw.items():
            resolution_area(name, where)
            if not isinstance(frames, Mapping) or not frames:
                raise UsageError(
                    f"{where}: {name!r} must map frame counts to [keep_prob, batch_size]"
                )
            resolutions[name] = {}
            for count, value in frames.items():
                key = f"{where}.{name}.{count}"
                if not str(count).isdigit() or int(count) < 1:
                    raise UsageError(f"{key}: frame count must be a positive integer")
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    raise UsageError(f"{key}: expected [keep_prob, batch_size], got {value!r}")
                prob, batch = value
                if not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
                    raise UsageError(f"{key}: keep_prob must be in [0, 1], got {prob!r}")
                if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
                    raise UsageError(f"{key}: batch_size must be a positive integer, got {batch!r}")
                resolutions[name][int(count)] = FrameBucket(float(prob), batch)
        return cls(resolutions, tuple(str(r) for r in ratios), multiple)

    def bucket_ids(self) -> list[str]:
        """Every bucket id this config can produce."""
        return [
            bucket_id(name, count, ratio)
            for name, frames in self.resolutions.items()
            for count in frames
            for ratio in self.aspect_ratios
        ]

    def shape(self, bucket: str) -> tuple[int, int, int]:
        """(frames, height, width) of a bucket id."""
        name, count, ratio = self._split(bucket)
        height, width = ratio_size(self.areas[name], parse_ratio(ratio), self.multiple)
        return count, height, width

    def batch_size(self, bucket: str) -> int:
        """Batch size of a bucket id."""
        name, count, _ = self._split(bucket)
        return self.resolutions[name][count].batch_size

    def batch_sizes(self) -> dict[str, int]:
        """Bucket id -> batch size, for `BucketBatchSampler`."""
        return {b: self.batch_size(b) for b in self.bucket_ids()}

    def _split(self, bucket: str) -> tuple[str, int, str]:
        try:
            name, count, ratio = bucket.split("-")
            if name in self.resolutions and int(count) in self.resolutions[name]:
                return name, int(count), ratio
        except ValueError:
            pass
        raise UsageError(f"unknown bucket {bucket!r}; this config has e.g. {self.bucket_ids()[:3]}")


def bucket_id(resolution: str, frames: int, ratio: str) -> str:
    """'256px-33-16:9'."""
    return f"{resolution}-{frames}-{ratio}"


def resolution_area(name: str, where: str = "[data.buckets]") -> int:
    """Pixels of a resolution name: 'Npx' = N*N, 'Np' = N*N*16/9 (a 16:9 frame N pixels high)."""
    match = _RESOLUTION.match(str(name))
    if match is None:
        raise UsageError(f"{where}: unknown resolution {name!r}; use 'Npx' (N*N) or 'Np' (16:9)")
    n = int(match.group(1))
    return n * n if match.group(2) == "px" else round(n * n * 16 / 9)


def parse_ratio(ratio: str | float, where: str = "[data.buckets]") -> float:
    """'16:9' -> 16/9 (width over height)."""
    try:
        w, h = (float(v) for v in str(ratio).split(":"))
        if w > 0 and h > 0:
            return w / h
    except ValueError:
        pass
    raise UsageError(f"{where}.aspect_ratios: {ratio!r} is not a ratio like '16:9'")


def ratio_size(area: int, ratio: float, multiple: int) -> tuple[int, int]:
    """(height, width) of about `area` pixels at width/height `ratio`, rounded to `multiple`."""
    # Round the height, then derive the width from it, so the ratio survives the rounding better
    # than rounding both; half rounds up (not to even): '144px' at 1:1 is 160x160.
    height = max(multiple, math.floor(math.sqrt(area / ratio) / multiple + 0.5) * multiple)
    width = max(multiple, math.floor(height * ratio / multiple + 0.5) * multiple)
    return height, width


def assign_bucket(
    info: Any, config: BucketConfig, rng: np.random.Generator, num_frames: int | None = None
) -> str | None:
    """The bucket id of a clip (needs `.width`, `.height`, `.num_frames`), or None if none fits.

    `num_frames` overrides `info.num_frames` (a clip cut from a longer video).
    """
    frames_available = info.num_frames if num_frames is None else num_frames
    clip_ratio = info.width / info.height
    ratio = min(config.aspect_ratios, key=lambda r: abs(math.log(parse_ratio(r) / clip_ratio)))
    for name in sorted(config.resolutions, key=lambda n: -config.areas[n]):
        height, width = ratio_size(config.areas[name], parse_ratio(ratio), config.multiple)
        # Scale to cover the bucket then crop: refuse buckets that would need upscaling.
        if max(height / info.height, width / info.width) > 1:
            continue
        for count in sorted(config.resolutions[name], reverse=True):
            if (
                count <= frames_available
                and rng.random() < config.resolutions[name][count].keep_prob
            ):
                return bucket_id(name, count, ratio)
    return None


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of row indices from one bucket each, split across ranks, deterministic per epoch.

    Every rank gets the same number of batches (extra batches are dropped) and no index twice.
    `load_state_dict({"consumed": n, ...})` resumes after the first `n` batches of the epoch.
    `epoch_seed(seed, epoch)` seeds each epoch's shuffle (training passes the run's seed stream,
    `vidcli.train.data.epoch_seed`; a plain `seed * 1_000_003 + epoch` otherwise).
    """

    def __init__(
        self,
        buckets: Sequence[str | None],
        batch_sizes: Mapping[str, int] | int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = True,
        epoch_seed: Callable[[int, int], int] | None = None,
    ):
        if not 0 <= rank < world_size:
            raise UsageError(f"rank must be in [0, {world_size}), got {rank}")
        self.buckets = list(buckets)
        self.batch_sizes = batch_sizes
        self.rank, self.world_size = rank, world_size
        self.seed, self.epoch = seed, epoch
        self.drop_last = drop_last
        self.epoch_seed = epoch_seed or _epoch_seed
        self.consumed = 0

    def _batch_size(self, bucket: str) -> int:
        if isinstance(self.batch_sizes, int):
            return self.batch_sizes
        if bucket not in self.batch_sizes:
            raise UsageError(f"no batch size for bucket {bucket!r}")
        return self.batch_sizes[bucket]

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.epoch_seed(self.seed, self.epoch))
        groups: dict[str, list[int]] = {}
        for index, bucket in enumerate(self.buckets):
            if bucket is not None:
                groups.setdefault(bucket, []).append(index)
        batches: list[list[int]] = []
        for bucket in sorted(groups):
            indices = groups[bucket]
            order = torch.randperm(len(indices), generator=generator).tolist()
            size = self._batch_size(bucket)
            for start in range(0, len(order), size):
                batch = [indices[i] for i in order[start : start + size]]
                if len(batch) == size or not self.drop_last:
                    batches.append(batch)
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in order]
        # Equal counts per rank: a rank that runs out first would hang the others' collectives.
        usable = len(batches) - len(batches) % self.world_size
        return batches[:usable]

    def _rank_batches(self) -> list[list[int]]:
        return self._all_batches()[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self._rank_batches()) - self.consumed

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        while self.consumed < len(batches):
            batch = batches[self.consumed]
            self.consumed += 1
            yield batch
        # A finished epoch starts the next one from its beginning.
        self.consumed = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (call before each epoch), starting from its first batch."""
        self.epoch, self.consumed = epoch, 0

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and batches of this epoch already yielded on this rank."""
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume: the next pass skips the first `state["consumed"]` batches of `state["epoch"]`."""
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
