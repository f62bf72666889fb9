"""Video in and out through PyAV: probe a file, decode a clip, write MP4 / GIF / PNG frames.

Frames in memory are `(T, H, W, 3)` uint8 RGB arrays; model tensors are `(3, T, H, W)` floats in
[-1, 1]. Every write goes to a temporary name beside the target and is renamed into place, so a
crash never leaves a half-written video under the final name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import av
import numpy as np

from vidcli.errors import ShapeError, UsageError, VidcliError
from vidcli.fileio import atomic_folder, atomic_path

if TYPE_CHECKING:
    import torch

VideoFormat = Literal["mp4", "gif", "png"]
VIDEO_FORMATS: tuple[str, ...] = ("mp4", "gif", "png")


class MediaError(VidcliError):
    """A file that cannot be probed or decoded; `reason` is a short phrase for reports."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learns about one file (the columns of the data manifest)."""

    path: str
    bytes: int
    mtime: float
    codec: str
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float


def probe_video(path: str | Path, verify: bool = True) -> VideoInfo:
    """Read the container header of a video; with `verify`, decode its first and last frames.

    Raises MediaError with a reason (empty, not a media file, audio-only, truncated, ...).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise MediaError(path, f"cannot read file: {e.strerror}") from e
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if stat.st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                kinds = sorted({s.type for s in container.streams})
                what = f"{'/'.join(kinds)}-only" if kinds else "no streams"
                raise MediaError(path, f"no video stream ({what})")
            stream = container.streams.video[0]
            fps = _stream_fps(stream)
            duration = _stream_duration(stream, container)
            num_frames = stream.frames or round(duration * fps)
            codec = stream.codec_context.name
            width, height = stream.codec_context.width, stream.codec_context.height
            if width <= 0 or height <= 0 or fps <= 0:
                raise MediaError(path, f"unusable video stream ({width}x{height} at {fps} fps)")
            if num_frames <= 0:
                raise MediaError(path, "video stream has no frames")
            if verify:
                _verify_ends(path, container, stream, duration, fps)
    except MediaError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError, IndexError) as e:
        what = "truncated or corrupt MP4/MOV" if _has_mp4_header(path) else "not a readable video"
        raise MediaError(path, f"{what} ({_short(e)})") from e
    return VideoInfo(
        path=str(path),
        bytes=stat.st_size,
        mtime=stat.st_mtime,
        codec=codec,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        duration=duration,
    )


def _has_mp4_header(path: Path) -> bool:
    """An ISO-BMFF file starts with a box whose type is 'ftyp' (bytes 4..8)."""
    with open(path, "rb") as f:
        return f.read(8)[4:] == b"ftyp"


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_duration(
    stream: av.video.stream.VideoStream, container: av.container.Container
) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _verify_ends(path: Path, container, stream, duration: float, fps: float) -> None:
    """Decode the first frame, then demux (not decode) the last second: catches cut-off files.

    Demuxing reads the packets' timestamps without decoding, so a clip with one keyframe costs
    the same as one with many.
    """
    try:
        first = next(container.decode(stream), None)
    except av.error.FFmpegError as e:
        raise MediaError(path, f"first frame does not decode ({_short(e)})") from e
    if first is None:
        raise MediaError(path, "no decodable frames")
    if duration <= 1.5 / fps or stream.time_base is None:
        return
    start = first.time or 0.0
    tail = max(start, start + duration - 1.0)
    container.seek(int(tail / stream.time_base), stream=stream, backward=True)
    last = None
    try:
        for packet in container.demux(stream):
            if packet.is_corrupt:
                # The demuxer flags a packet whose bytes run past the end of the file.
                raise MediaError(
                    path,
                    f"truncated: packet at {float(packet.pts * stream.time_base):.2f}s is cut off",
                )
            if packet.pts is not None and packet.size:
                end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                last = end if last is None else max(last, end)
    except av.error.FFmpegError as e:
        raise MediaError(path, f"truncated or corrupt near the end ({_short(e)})") from e
    # A cut-off file keeps its header's duration but lacks the packets near the end.
    if last is None or last < start + duration - 1.5 / fps:
        seen = "none" if last is None else f"{last:.2f}s"
        raise MediaError(path, f"truncated: header says {duration:.2f}s, packets end at {seen}")


def _short(e: BaseException) -> str:
    if isinstance(e, av.error.FFmpegError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def read_frames(
    path: str | Path,
    start_s: float | None = None,
    end_s: float | None = None,
    num_frames: int | None = None,
    stride: int = 1,
    target_fps: float | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode frames `(T, H, W, 3)` uint8 RGB from `[start_s, end_s)`.

    Takes every `stride`-th frame, or resamples to `target_fps` (nearest earlier frame), and stops
    after `num_frames`. `size=(height, width)` scales each frame to cover that size and crops the
    centre (scaling in libswscale is several times faster than in torch for large frames).
    """
    if stride < 1:
        raise UsageError(f"stride must be >= 1, got {stride}")
    if target_fps is not None and target_fps <= 0:
        raise UsageError(f"target_fps must be > 0, got {target_fps}")
    path = Path(path)
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            start = start_s or 0.0
            if start > 0:
                container.seek(int(start / stream.time_base), stream=stream, backward=True)
            kept = 0
            next_time = start
            for i, frame in enumerate(_frames_from(container, stream, start)):
                t = frame.time if frame.time is not None else start
                if end_s is not None and t >= end_s:
                    break
                if target_fps is not None:
                    if t + 1e-6 < next_time:
                        continue
                    next_time += 1.0 / target_fps
                elif i % stride:
                    continue
                frames.append(_to_rgb(frame, size))
                kept += 1
                if num_frames is not None and kept >= num_frames:
                    break
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError) as e:
        raise MediaError(path, f"decode failed ({_short(e)})") from e
    if not frames:
        raise MediaError(path, f"no frames in [{start_s}, {end_s}) s")
    return np.stack(frames)


def _frames_from(container, stream, start: float):
    """Decoded frames at or after `start` seconds (a seek lands on the keyframe before it)."""
    for frame in container.decode(stream):
        if frame.time is not None and frame.time + 1e-6 < start:
            continue
        yield frame


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    height, width = size
    scale = max(height / frame.height, width / frame.width)
    h, w = max(height, math.ceil(frame.height * scale)), max(width, math.ceil(frame.width * scale))
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    top, left = (h - height) // 2, (w - width) // 2
    return rgb[top : top + height, left : left + width]


def to_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """`(T, H, W, 3)` uint8 frames from themselves or from a `(3, T, H, W)` tensor in [-1, 1]."""
    if isinstance(frames, np.ndarray):
        array = frames
    else:
        import torch

        tensor = frames.detach().to("cpu")
        if tensor.dtype != torch.uint8:
            if tensor.ndim != 4 or tensor.shape[0] != 3:
                raise ShapeError(f"expected a (3, T, H, W) tensor, got {tuple(tensor.shape)}")
            tensor = ((tensor.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            tensor = tensor.permute(1, 2, 3, 0)
        array = tensor.contiguous().numpy()
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ShapeError(f"expected (T, H, W, 3) uint8 frames, got {array.shape} {array.dtype}")
    return np.ascontiguousarray(array)


def write_video(
    path: str | Path,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    format: VideoFormat = "mp4",
    overwrite: bool = False,
) -> Path:
    """Write frames as H.264 yuv420p MP4, a GIF, or a folder of PNGs (`format="png"`); atomic.

    `frames`: `(T, H, W, 3)` uint8 or a tensor `(3, T, H, W)` in [-1, 1]. MP4 needs even H and W.
    """
    if format not in VIDEO_FORMATS:
        raise UsageError(
            f"unknown video format {format!r}; choose one of {', '.join(VIDEO_FORMATS)}"
        )
    if fps <= 0:
        raise UsageError(f"fps must be > 0, got {fps}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    array = to_uint8_frames(frames)
    _, height, width, _ = array.shape
    if format == "mp4" and (height % 2 or width % 2):
        raise ShapeError(
            f"H.264 yuv420p needs an even size, got {width}x{height}; use gif or png instead"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "png":
        with atomic_folder(path) as folder:
            _encode(str(folder / "frame_%05d.png"), array, fps, "png")
        return path
    with atomic_path(path) as tmp:
        _encode(str(tmp), array, fps, format)
    return path


def write_image(
    path: str | Path, image: np.ndarray | torch.Tensor, overwrite: bool = False
) -> Path:
    """Write one image as a PNG file, atomically: `(H, W, 3)` uint8 or `(3, H, W)` in [-1, 1]."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    frames = image[None] if isinstance(image, np.ndarray) else image[:, None]
    array = to_uint8_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        # image2 with a single frame and no %d pattern writes exactly that file.
        _encode(str(tmp), array, 1, "png")
    return path


def _encode(target: str, array: np.ndarray, fps: float, format: str) -> None:
    codec, pix_fmt, options = {
        # The same frames must give the same file: x264's threads and its macroblock-tree
        # lookahead made the output depend on scheduling here, so both are off.
        "mp4": (
            "libx264",
            "yuv420p",
            {"crf": "18", "threads": "1", "x264-params": "no-mbtree=1:rc-lookahead=0"},
        ),
        "gif": ("gif", "rgb8", {}),
        "png": ("png", "rgb24", {}),
    }[format]
    muxer = {"mp4": "mp4", "gif": "gif", "png": "image2"}[format]
    rate = Fraction(fps).limit_denominator(1001)
    # faststart puts the index first: players can start streaming before the whole file arrives.
    container_options = {"movflags": "+faststart"} if format == "mp4" else {}
    with av.open(target, mode="w", format=muxer, options=container_options) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = array.shape[2], array.shape[1]
        stream.pix_fmt = pix_fmt
        for image in array:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
