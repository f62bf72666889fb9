"""prepare(): probe a mixed folder into videos.parquet / rejected.parquet, incrementally."""

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vidcli.data import prepare as prepare_module
from vidcli.data.buckets import BucketConfig
from vidcli.data.prepare import PrepareOptions, prepare
from vidcli.errors import UsageError


def rows(path: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in pq.read_table(path).to_pylist()}


def test_mixed_folder_manifest_and_rejections(mixed_folder, known_clips, tmp_path):
    folder, corrupt = mixed_folder
    options = PrepareOptions([str(folder)], tmp_path / "out", workers=2)
    result = prepare(options, progress=False)

    manifest = rows(result.manifest)
    shapes = {f"shapes-{i:05d}.mp4" for i in range(6)}
    assert set(manifest) == set(known_clips) | shapes
    for name, (width, height, frames) in known_clips.items():
        row = manifest[name]
        assert (row["width"], row["height"], row["num_frames"], row["codec"]) == (
            width,
            height,
            frames,
            "h264",
        )
        assert row["bytes"] == (folder / name).stat().st_size
    assert manifest["bikes.mp4"]["fps"] == pytest.approx(25.0)
    assert manifest["bikes.mp4"]["duration"] == pytest.approx(10.0)
    assert manifest["carphone_pristine.mp4"]["fps"] == pytest.approx(30000 / 1001)
    for name in shapes:
        assert (manifest[name]["width"], manifest[name]["num_frames"]) == (64, 8)
        assert (
            manifest[name]["caption"].startswith("a ") and " moving " in manifest[name]["caption"]
        )
    assert manifest["bigbuckbunny.mp4"]["caption"] == "a big rabbit in a meadow"
    assert manifest["bikes.mp4"]["caption"] == ""
    assert result.missing_captions == 2

    rejected = rows(result.rejected)
    assert set(rejected) == {p.name for p in corrupt.values()}
    reasons = {kind: rejected[path.name]["reason"] for kind, path in corrupt.items()}
    assert reasons["empty"] == "empty file (0 bytes)"
    assert reasons["audio"] == "no video stream (audio-only)"
    assert reasons["truncated"].startswith("truncated or corrupt MP4")
    assert reasons["garbage"].startswith("not a readable video")
    assert reasons["text"].startswith("not a readable video")
    assert (result.accepted, result.rejected_count) == (9, 5)

    again = prepare(options, progress=False)
    assert again.skipped_unchanged == 14
    assert (again.accepted, again.rejected_count) == (9, 5)
    assert rows(again.manifest) == manifest


def test_changed_file_is_probed_again(real_clips, tmp_path):
    clip = tmp_path / "src" / "clip.mp4"
    clip.parent.mkdir()
    shutil.copy(real_clips["carphone_pristine.mp4"], clip)
    options = PrepareOptions([str(clip.parent)], tmp_path / "out", workers=1)
    assert prepare(options, progress=False).accepted == 1
    shutil.copy(real_clips["bikes.mp4"], clip)
    result = prepare(options, progress=False)
    assert result.skipped_unchanged == 0
    assert rows(result.manifest)["clip.mp4"]["width"] == 640


def test_interrupted_run_keeps_finished_probes(mixed_folder, tmp_path, monkeypatch):
    folder, _ = mixed_folder
    options = PrepareOptions([str(folder)], tmp_path / "out", workers=1, checkpoint_s=0.0)
    real_probe = prepare_module.probe_row
    calls = []

    def probe_then_crash(path):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(path)
        return real_probe(path)

    monkeypatch.setattr(prepare_module, "probe_row", probe_then_crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(options, progress=False)
    assert not (tmp_path / "out" / "videos.parquet").exists()
    monkeypatch.setattr(prepare_module, "probe_row", real_probe)
    result = prepare(options, progress=False)
    assert result.skipped_unchanged == 4
    assert result.accepted + result.rejected_count == 14


def test_listing_captions_clips_and_filters(real_clips, shapes_listing, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text(
        "path,caption,start,end\n"
        f"{real_clips['bikes.mp4']},bikes racing,2.0,3.0\n"
        f"{real_clips['carphone_pristine.mp4']},a man on the phone,,\n"
        f"{real_clips['bigbuckbunny.mp4']},,,\n"
        "missing.mp4,gone,,\n"
    )
    options = PrepareOptions(
        [str(listing), str(shapes_listing)],
        tmp_path / "out",
        workers=1,
        min_frames=10,
        min_size=140,
        max_aspect=2.0,
        require_caption=True,
    )
    result = prepare(options, progress=False)
    manifest, rejected = rows(result.manifest), rows(result.rejected)
    assert set(manifest) == {"carphone_pristine.mp4"}
    assert manifest["carphone_pristine.mp4"]["caption"] == "a man on the phone"
    # 1 s of the 25 fps clip is 25 frames; its 640x272 aspect 2.35 fails max_aspect.
    assert rejected["bikes.mp4"]["reason"] == "max_aspect: 640x272 has aspect 2.35 > 2.0"
    assert rejected["bigbuckbunny.mp4"]["reason"].startswith("require_caption:")
    assert rejected["missing.mp4"]["reason"] == "file not found"
    assert rejected["shapes-00000.mp4"]["reason"] == "min_frames: 8 frames < 10"
    fps = PrepareOptions([str(listing)], tmp_path / "out2", workers=1, min_fps=26, max_fps=29)
    rejected = rows(prepare(fps, progress=False).rejected)
    assert rejected["bikes.mp4"]["reason"] == "min_fps: 25.000 fps < 26"
    assert rejected["carphone_pristine.mp4"]["reason"] == "max_fps: 29.970 fps > 29"
    size = PrepareOptions([str(listing)], tmp_path / "out3", workers=1, min_size=150)
    rejected = rows(prepare(size, progress=False).rejected)
    assert (
        rejected["carphone_pristine.mp4"]["reason"] == "min_size: 176x144, shorter side 144 < 150"
    )
    assert rejected["missing.mp4"]["reason"] == "file not found"


def test_buckets_in_manifest(real_clips, tmp_path):
    buckets = BucketConfig.from_dict(
        {"256px": {"1": [1.0, 8], "33": [1.0, 2]}, "128px": {"16": [1.0, 4]}}
    )
    options = PrepareOptions([str(p) for p in real_clips.values()], tmp_path / "out", workers=1)
    result = prepare(options, buckets=buckets, progress=False)
    manifest = rows(result.manifest)
    assert manifest["bigbuckbunny.mp4"]["bucket"] == "256px-33-16:9"
    assert manifest["bikes.mp4"]["bucket"] == "256px-33-16:9"
    assert manifest["carphone_pristine.mp4"]["bucket"] == "128px-16-4:3"


def test_synthetic_source_and_bad_options(tmp_path):
    result = prepare(
        PrepareOptions(["synthetic:shapes:3"], tmp_path / "out", workers=1), progress=False
    )
    assert result.accepted == 3 and result.missing_captions == 0
    with pytest.raises(UsageError, match="min_frames must be >= 1, got 0; max_aspect"):
        prepare(PrepareOptions(["x"], tmp_path, min_frames=0, max_aspect=0.5), progress=False)
    with pytest.raises(UsageError, match="source 'nowhere/' not found"):
        prepare(PrepareOptions(["nowhere/"], tmp_path), progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "a.mp4"}\n')
    with pytest.raises(UsageError, match="no 'path' column; columns are file"):
        prepare(PrepareOptions([str(bad)], tmp_path), progress=False)
