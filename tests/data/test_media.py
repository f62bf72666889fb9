"""media.py: probe, decode and write videos with PyAV."""

import numpy as np
import pytest
import torch

from vidcli.errors import ShapeError, UsageError
from vidcli.media import MediaError, probe_video, read_frames, write_video


def smooth_clip(frames=6, height=48, width=64) -> np.ndarray:
    """Gradients that move: they compress well, so decoded pixels stay close to the input."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    r = 128 + 100 * np.sin(x / 9 + t / 3)
    g = 128 + 100 * np.cos(y / 7 - t / 4)
    b = 60 + 2 * x
    return np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8)


def test_probe_real_clips(real_clips, known_clips):
    for name, (width, height, frames) in known_clips.items():
        info = probe_video(real_clips[name])
        assert (info.width, info.height, info.num_frames, info.codec) == (
            width,
            height,
            frames,
            "h264",
        )
        assert info.bytes == real_clips[name].stat().st_size
    assert probe_video(real_clips["bigbuckbunny.mp4"]).duration == pytest.approx(5.28)


def test_probe_rejects_bad_files(corrupt_files, tmp_path):
    expected = {
        "empty": "empty file (0 bytes)",
        "audio": "no video stream (audio-only)",
        "truncated": "truncated or corrupt MP4/MOV",
        "garbage": "not a readable video",
        "text": "not a readable video",
    }
    for kind, path in corrupt_files.items():
        with pytest.raises(MediaError) as caught:
            probe_video(path)
        assert caught.value.reason.startswith(expected[kind]), (kind, caught.value.reason)
    with pytest.raises(MediaError, match="cannot read file"):
        probe_video(tmp_path / "absent.mp4")


def test_probe_catches_cut_off_faststart_file(tmp_path):
    # faststart puts the index first, so a cut-off file still opens: only the tail check sees it.
    whole = write_video(tmp_path / "whole.mp4", smooth_clip(frames=40), fps=8)
    assert probe_video(whole).num_frames == 40
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(MediaError, match="truncated"):
        probe_video(cut)


def test_read_frames_stride_fps_start_and_crop(real_clips):
    bikes = real_clips["bikes.mp4"]
    every = read_frames(bikes, num_frames=9)
    assert every.shape == (9, 272, 640, 3) and every.dtype == np.uint8
    assert np.array_equal(read_frames(bikes, num_frames=5, stride=2), every[::2])
    # 25 fps resampled to 12.5 fps keeps every other frame.
    assert np.array_equal(read_frames(bikes, num_frames=5, target_fps=12.5), every[::2])
    # Frame 50 is at 2.0 s; starting there must match decoding from the beginning.
    from_start = read_frames(bikes, start_s=2.0, num_frames=2)
    assert np.array_equal(from_start, read_frames(bikes, num_frames=52)[50:])
    assert len(read_frames(bikes, start_s=9.0, end_s=9.4)) == 10
    cropped = read_frames(real_clips["bigbuckbunny.mp4"], num_frames=2, size=(80, 80))
    assert cropped.shape == (2, 80, 80, 3)
    # 1280x720 -> 143x80 (ceil), crop columns 31..111, i.e. source columns 277..997 (x 1280/143):
    # compare with 9x9 box averages of that region; a crop 3 source pixels off scores > 6.
    full = read_frames(real_clips["bigbuckbunny.mp4"], num_frames=1)[0].astype(np.float64)
    left = round(31 * 1280 / 143)
    centre = full[:, left : left + 720].reshape(80, 9, 80, 9, 3)
    assert np.abs(cropped[0] - centre.mean((1, 3))).mean() < 4


def test_write_mp4_round_trip(tmp_path):
    clip = smooth_clip()
    path = write_video(tmp_path / "clip.mp4", clip, fps=8)
    info = probe_video(path)
    assert (info.width, info.height, info.num_frames, info.fps) == (64, 48, 6, 8.0)
    decoded = read_frames(path).astype(np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((decoded - clip) ** 2))
    assert psnr > 30
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_write_tensor_gif_and_png(tmp_path):
    clip = smooth_clip(frames=4, height=32, width=32)
    tensor = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1  # (3, T, H, W)
    gif = write_video(tmp_path / "clip.gif", tensor, fps=4, format="gif")
    assert probe_video(gif).num_frames == 4 and probe_video(gif).codec == "gif"
    folder = write_video(tmp_path / "frames", tensor, fps=4, format="png")
    pngs = sorted(folder.iterdir())
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(1, 5)]
    # PNG is lossless: the float -> uint8 conversion must give back the original pixels.
    assert np.array_equal(read_frames(pngs[2])[0], clip[2])


def test_write_refuses_overwrite_and_odd_sizes(tmp_path):
    path = write_video(tmp_path / "a.mp4", smooth_clip(), fps=8)
    with pytest.raises(UsageError, match=r"a\.mp4 already exists; pass --overwrite"):
        write_video(path, smooth_clip(), fps=8)
    write_video(path, smooth_clip(frames=3), fps=8, overwrite=True)
    assert probe_video(path).num_frames == 3
    with pytest.raises(ShapeError, match="even size, got 63x48"):
        write_video(tmp_path / "odd.mp4", smooth_clip(width=63), fps=8)
    with pytest.raises(UsageError, match="unknown video format 'avi'"):
        write_video(tmp_path / "x.avi", smooth_clip(), fps=8, format="avi")
