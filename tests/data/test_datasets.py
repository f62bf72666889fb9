"""VideoDataset on real clips, decode-failure replacement, and DataLoader workers."""

import logging
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vidcli.data.buckets import BucketBatchSampler, BucketConfig
from vidcli.data.datasets import VideoDataset
from vidcli.data.prepare import PrepareOptions, prepare
from vidcli.errors import StageFailed, UsageError
from vidcli.media import read_frames


@pytest.fixture(scope="module")
def real_manifest(real_clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    return prepare(
        PrepareOptions([str(p) for p in real_clips.values()], out, workers=1), progress=False
    ).manifest


def test_items_are_shaped_and_ranged(real_manifest, real_clips):
    dataset = VideoDataset(real_manifest, num_frames=4, height=64, width=96, stride=2)
    assert len(dataset) == 3
    for index in range(3):
        item = dataset[index]
        video = item["video"]
        assert video.shape == (3, 4, 64, 96) and video.dtype == torch.float32
        assert video.min() >= -1 and video.max() <= 1
        assert video.max() - video.min() > 0.5  # real content, not a constant frame
        assert item["index"] == index
    # Channels-first floats are the uint8 frames mapped linearly onto [-1, 1].
    bikes = dataset.paths.index(str(real_clips["bikes.mp4"]))
    frames = read_frames(real_clips["bikes.mp4"], num_frames=7, size=(64, 96))[::2]
    expected = torch.from_numpy(frames.astype(np.float32) / 127.5 - 1).permute(3, 0, 1, 2)
    assert torch.allclose(dataset[bikes]["video"], expected, atol=1e-6)
    # bikes runs at 25 fps: resampling to 12.5 fps gives the same frames as stride 2.
    by_fps = VideoDataset(real_manifest, num_frames=4, height=64, width=96, fps=12.5)
    assert torch.equal(by_fps[bikes]["video"], dataset[bikes]["video"])


def test_bucket_shapes_and_loader(real_clips, tmp_path):
    buckets = BucketConfig.from_dict({"128px": {"4": [1.0, 1]}})
    sources = [
        str(real_clips[name]) for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
    ]
    manifest = prepare(
        PrepareOptions(sources, tmp_path, workers=1), buckets, progress=False
    ).manifest
    dataset = VideoDataset(manifest, buckets=buckets)
    # 128px at 16:9 -> 96x160; carphone (11:9) takes 4:3 -> 96x128.
    shapes = {dataset.buckets[i]: tuple(dataset[i]["video"].shape) for i in range(3)}
    assert shapes == {"128px-4-16:9": (3, 4, 96, 160), "128px-4-4:3": (3, 4, 96, 128)}
    sampler = BucketBatchSampler(dataset.buckets, buckets.batch_sizes(), seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=1)
    seen = sorted(i for batch in loader for i in batch["index"].tolist())
    assert seen == [0, 1, 2]


def test_decode_failure_is_replaced(real_clips, tmp_path, caplog):
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(real_clips["carphone_pristine.mp4"], folder / f"{name}.mp4")
        (folder / f"{name}.txt").write_text(f"clip {name}")
    manifest = prepare(
        PrepareOptions([str(folder)], tmp_path / "out", workers=1), progress=False
    ).manifest
    (folder / "b.mp4").write_bytes(b"broken after prepare")
    dataset = VideoDataset(manifest, num_frames=2, height=32, width=32)
    with caplog.at_level(logging.WARNING):
        item = dataset[1]
    assert (item["index"], item["caption"]) == (2, "clip c")
    assert "skipping row 1" in caplog.text
    assert dataset[1]["index"] == 2  # the same replacement every time
    (folder / "a.mp4").unlink()
    (folder / "c.mp4").unlink()
    with pytest.raises(StageFailed, match="3 clips in a row failed to decode from row 0"):
        VideoDataset(manifest, num_frames=2, height=32, width=32, max_replacements=2)[0]


def test_clip_too_short_and_bad_arguments(real_manifest):
    with pytest.raises(UsageError, match="needs num_frames, height and width"):
        VideoDataset(real_manifest, num_frames=4)
    with pytest.raises(UsageError, match="give fps"):
        VideoDataset(real_manifest, num_frames=4, height=8, width=8, fps=5, stride=2)
    dataset = VideoDataset(real_manifest, num_frames=200, height=16, width=16, max_replacements=0)
    carphone = next(i for i, p in enumerate(dataset.paths) if p.endswith("carphone_pristine.mp4"))
    with pytest.raises(StageFailed):
        dataset[carphone]
