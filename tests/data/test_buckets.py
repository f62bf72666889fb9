"""Buckets: parsing with errors, assignment, and the per-rank batch sampler."""

import numpy as np
import pytest

from vidcli.data.buckets import BucketBatchSampler, BucketConfig, assign_bucket, ratio_size
from vidcli.errors import UsageError
from vidcli.media import VideoInfo

CONFIG = {"256px": {"1": [1.0, 32], "33": [0.5, 4]}, "144px": {"16": [1.0, 8]}}


def info(width, height, frames) -> VideoInfo:
    return VideoInfo("x.mp4", 1, 0.0, "h264", width, height, 25.0, frames, frames / 25)


def test_parse_and_shapes():
    config = BucketConfig.from_dict(CONFIG)
    assert config.resolutions["256px"][33].keep_prob == 0.5
    assert config.batch_size("256px-33-16:9") == 4
    # 256*256 pixels at 16:9: h = sqrt(65536 * 9/16) = 192, w = 341.3 -> 352 (multiple of 32).
    assert config.shape("256px-33-16:9") == (33, 192, 352)
    assert config.shape("144px-16-1:1") == (16, 160, 160)
    assert ratio_size(1280 * 720, 16 / 9, 16) == (720, 1280)
    assert len(config.bucket_ids()) == 3 * 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"256pix": {"1": [1.0, 4]}}, r"unknown resolution '256pix'"),
        ({"256px": {"x": [1.0, 4]}}, r"\[data.buckets\].256px.x: frame count must be a positive"),
        ({"256px": {"1": [1.5, 4]}}, r"256px.1: keep_prob must be in \[0, 1\], got 1.5"),
        ({"256px": {"1": [1.0, 0]}}, r"256px.1: batch_size must be a positive integer, got 0"),
        ({"256px": {"1": 4}}, r"256px.1: expected \[keep_prob, batch_size\], got 4"),
        ({"256px": {"1": [1, 2]}, "aspect_ratios": ["wide"]}, r"'wide' is not a ratio like '16:9'"),
        ({}, r"no resolutions"),
    ],
)
def test_parse_errors_name_the_key(raw, message):
    with pytest.raises(UsageError, match=message):
        BucketConfig.from_dict(raw)


def test_assign_bucket():
    config = BucketConfig.from_dict(CONFIG)
    rng = np.random.default_rng(0)
    # Long 720p clips go to 256px; the 0.5 coin decides between 33 frames and 1 frame.
    got = {assign_bucket(info(1280, 720, 132), config, rng) for _ in range(50)}
    assert got == {"256px-33-16:9", "256px-1-16:9"}
    assert assign_bucket(info(640, 272, 20), config, rng) == "256px-1-16:9"
    # 176x144 cannot cover 256px without upscaling; 144px at 4:3 is 128x160 (multiples of 32).
    assert assign_bucket(info(176, 144, 120), config, rng) == "144px-16-4:3"
    assert assign_bucket(info(176, 144, 10), config, rng) is None
    assert assign_bucket(info(144, 176, 120), config, rng) == "144px-16-3:4"


def batches_of(sampler) -> list[list[int]]:
    return list(sampler)


def test_sampler_same_bucket_disjoint_ranks_deterministic():
    buckets = ["a"] * 23 + ["b"] * 17 + [None] * 3 + ["c"] * 9
    sizes = {"a": 4, "b": 3, "c": 2}
    per_rank = [
        batches_of(BucketBatchSampler(buckets, sizes, r, 3, seed=7, epoch=1)) for r in range(3)
    ]
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert len(seen) == len(set(seen))
    for batch in (b for batches in per_rank for b in batches):
        kinds = {buckets[i] for i in batch}
        assert len(kinds) == 1 and len(batch) == sizes[kinds.pop()]
    # Full batches: a 5 (of 23 rows), b 5 (of 17), c 4 (of 9) -> 14, trimmed to 12 for 3 ranks.
    assert sum(len(b) for b in per_rank) == 12
    again = batches_of(BucketBatchSampler(buckets, sizes, 1, 3, seed=7, epoch=1))
    assert again == per_rank[1]
    assert batches_of(BucketBatchSampler(buckets, sizes, 1, 3, seed=7, epoch=2)) != again


def test_sampler_resume():
    buckets = ["a"] * 40 + ["b"] * 40
    sampler = BucketBatchSampler(buckets, 4, seed=1)
    full = batches_of(BucketBatchSampler(buckets, 4, seed=1))
    iterator = iter(sampler)
    head = [next(iterator) for _ in range(5)]
    state = sampler.state_dict()
    assert state == {"seed": 1, "epoch": 0, "consumed": 5}
    resumed = BucketBatchSampler(buckets, 4, seed=99)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 5
    assert head + batches_of(resumed) == full
    # After a finished epoch the next pass starts over.
    assert batches_of(resumed) == full
    resumed.set_epoch(1)
    assert batches_of(resumed) != full
