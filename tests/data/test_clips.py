"""Several clips of one video in a listing (start/end) become several manifest rows."""

import numpy as np
import pyarrow.parquet as pq

from vidcli.data.datasets import VideoDataset
from vidcli.data.prepare import PrepareOptions, prepare
from vidcli.data.sources import resolve_sources
from vidcli.media import read_frames


def test_every_clip_of_a_video_is_a_row(tmp_path, real_clips):
    bikes = real_clips["bikes.mp4"]  # 25 fps, 250 frames
    listing = tmp_path / "clips.csv"
    listing.write_text(
        "path,caption,start,end\n"
        f"{bikes},first second,0,1\n"
        f"{bikes},fourth second,4,5\n"
        f"{bikes},first second,0,1\n"  # the same clip twice is one row
        f"{bikes},the whole video,,\n"
    )
    items = resolve_sources([str(listing), str(bikes)])  # the bare file is the whole video again
    assert [(i.start, i.end) for i in items] == [(0.0, 1.0), (4.0, 5.0), (None, None)]

    result = prepare(PrepareOptions(sources=[str(listing)], out_dir=tmp_path / "out", workers=1))
    rows = pq.read_table(result.manifest).to_pylist()
    assert [(r["caption"], r["start"], r["end"]) for r in rows] == [
        ("first second", 0.0, 1.0),
        ("fourth second", 4.0, 5.0),
        ("the whole video", None, None),
    ]
    assert result.skipped_unchanged == 0 and result.accepted == 3

    dataset = VideoDataset(result.manifest, num_frames=2, height=68, width=160)
    clips = [dataset[i]["video"] for i in range(3)]
    # Clip 2 starts at frame 100 (4 s at 25 fps); clips 1 and 3 start at frame 0.
    expected = read_frames(bikes, start_s=4.0, num_frames=2, size=(68, 160))
    got = ((clips[1] + 1) * 127.5).round().permute(1, 2, 3, 0).numpy().astype(np.uint8)
    assert np.array_equal(got, expected)
    assert torch_equal(clips[0], clips[2]) and not torch_equal(clips[0], clips[1])

    again = prepare(PrepareOptions(sources=[str(listing)], out_dir=tmp_path / "out", workers=1))
    assert again.skipped_unchanged == 1 and again.accepted == 3  # one file, probed once


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())
