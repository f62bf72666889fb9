"""`vidcli prepare-data`: probe every source file in parallel, filter, caption, bucket -> Parquet.

Outputs in the output folder:
  videos.parquet    the good clips: path, bytes, mtime, codec, width, height, fps, num_frames,
                    duration, caption, bucket, start, end
  rejected.parquet  every file left out, with the reason (a probe error or the filter that fired)
  probe-cache.parquet  probe results keyed by (path, bytes, mtime); checkpointed during the run, so
                    an interrupted run loses only the probes in flight and a rerun skips unchanged
                    files. Filters, captions and buckets are recomputed each run (they are cheap).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress

from vidcli.data.parquet import write_parquet_atomic
from vidcli.data.sources import CAPTION_SUFFIX, SourceItem, resolve_sources
from vidcli.errors import UsageError
from vidcli.media import MediaError, VideoInfo, probe_video

if TYPE_CHECKING:
    from vidcli.data.buckets import BucketConfig

log = logging.getLogger(__name__)

MANIFEST_NAME = "videos.parquet"
REJECTED_NAME = "rejected.parquet"
PROBE_CACHE_NAME = "probe-cache.parquet"

PROBE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("bytes", pa.int64()),
        ("mtime", pa.float64()),
        ("codec", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("fps", pa.float64()),
        ("num_frames", pa.int64()),
        ("duration", pa.float64()),
        ("error", pa.string()),
    ]
)
MANIFEST_SCHEMA = pa.schema(
    [f for f in PROBE_SCHEMA if f.name != "error"]
    + [
        pa.field("caption", pa.string()),
        pa.field("bucket", pa.string()),
        pa.field("start", pa.float64()),
        pa.field("end", pa.float64()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [("path", pa.string()), ("reason", pa.string()), ("bytes", pa.int64()), ("mtime", pa.float64())]
)


@dataclass
class PrepareOptions:
    """What `prepare` reads, how it filters, and where it writes."""

    sources: list[str]
    """Folders (recursive), globs, CSV/JSONL/Parquet listings, video files, synthetic:shapes:N."""
    out_dir: Path
    """Folder for videos.parquet, rejected.parquet and the probe cache."""
    workers: int = 0
    """Probe processes; 0 = one per CPU core, 1 = probe in this process."""
    min_frames: int = 1
    """Reject clips with fewer frames."""
    min_size: int = 0
    """Reject clips whose shorter side has fewer pixels."""
    max_aspect: float | None = None
    """Reject clips whose long side / short side exceeds this (None: no limit)."""
    min_fps: float | None = None
    """Reject clips below this frame rate (None: no limit)."""
    max_fps: float | None = None
    """Reject clips above this frame rate (None: no limit)."""
    require_caption: bool = False
    """Reject clips without a caption (listing column or `.txt` sidecar); else keep them, empty."""
    overwrite: bool = False
    """Probe every file again instead of reusing the results of an earlier run."""
    cache_dir: Path | None = None
    """Where synthetic sources are generated; default: `out_dir/synthetic`."""
    seed: int = 0
    """Seed of the bucket keep-probability coins (each clip's coin depends only on seed + path)."""
    checkpoint_s: float = 10.0
    """Seconds between checkpoints of the probe results during a run."""


@dataclass
class PrepareResult:
    """What a prepare run produced."""

    out_dir: Path
    manifest: Path
    rejected: Path
    accepted: int
    rejected_count: int
    skipped_unchanged: int
    missing_captions: int
    elapsed_s: float
    reasons: dict[str, int] = field(default_factory=dict)
    """Rejections per reason kind (the text before the first ':' or '(')."""

    def stdout_lines(self) -> list[str]:
        return [str(self.manifest)]


def prepare(
    options: PrepareOptions, buckets: BucketConfig | None = None, progress: bool = True
) -> PrepareResult:
    """Probe, filter, caption and bucket every source file; write the manifest and rejections."""
    started = time.perf_counter()
    _check_options(options)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = options.cache_dir or out_dir / "synthetic"
    items = resolve_sources(options.sources, cache_dir)
    if not items:
        raise UsageError(f"no files found in {', '.join(options.sources)}")

    cache_path = out_dir / PROBE_CACHE_NAME
    cache = {} if options.overwrite else _read_probe_cache(cache_path)
    probes: dict[str, dict] = {}
    todo: list[str] = []
    paths = list(dict.fromkeys(item.path for item in items))  # a file with several clips: once
    for path in paths:
        stat = _stat(path)
        old = cache.get(path)
        if stat is None:
            probes[path] = _error_row(path, None, None, "file not found")
        elif old is not None and (old["bytes"], old["mtime"]) == stat:
            probes[path] = old
        else:
            todo.append(path)
    skipped = len(paths) - len(todo)
    log.info("probing %d files (%d unchanged since the last run)", len(todo), skipped)

    def checkpoint() -> None:
        rows = [probes[path] for path in paths if path in probes]
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=PROBE_SCHEMA), cache_path)

    _probe_all(todo, probes, options.workers, progress, checkpoint, options.checkpoint_s)
    checkpoint()

    accepted, rejected = [], []
    missing_captions = 0
    for item in items:
        row = probes[item.path]
        if row["error"] is not None:
            rejected.append(_rejection(row, row["error"]))
            continue
        caption = _caption(item)
        missing_captions += not caption
        reason = _filter_reason(row, item, caption, options, buckets)
        if reason is not None:
            rejected.append(_rejection(row, reason))
            continue
        bucket = None
        if buckets is not None:
            bucket = _bucket(row, item, buckets, options.seed)
            if bucket is None:
                rejected.append(_rejection(row, _no_bucket_reason(row, item)))
                continue
        out = {k: v for k, v in row.items() if k != "error"}
        accepted.append(
            out | {"caption": caption, "bucket": bucket, "start": item.start, "end": item.end}
        )

    manifest = write_parquet_atomic(
        pa.Table.from_pylist(accepted, schema=MANIFEST_SCHEMA), out_dir / MANIFEST_NAME
    )
    rejected_path = write_parquet_atomic(
        pa.Table.from_pylist(rejected, schema=REJECTED_SCHEMA), out_dir / REJECTED_NAME
    )
    if missing_captions:
        log.warning(
            "%d clips have no caption (no listing caption, no .txt sidecar)", missing_captions
        )
    reasons: dict[str, int] = {}
    for row in rejected:
        kind = row["reason"].split(":")[0].split("(")[0].strip()
        reasons[kind] = reasons.get(kind, 0) + 1
    return PrepareResult(
        out_dir=out_dir,
        manifest=manifest,
        rejected=rejected_path,
        accepted=len(accepted),
        rejected_count=len(rejected),
        skipped_unchanged=skipped,
        missing_captions=missing_captions,
        elapsed_s=time.perf_counter() - started,
        reasons=reasons,
    )


def _check_options(options: PrepareOptions) -> None:
    problems = []
    if options.workers < 0:
        problems.append(f"workers must be >= 0, got {options.workers}")
    if options.min_frames < 1:
        problems.append(f"min_frames must be >= 1, got {options.min_frames}")
    if options.min_size < 0:
        problems.append(f"min_size must be >= 0, got {options.min_size}")
    if options.max_aspect is not None and options.max_aspect < 1:
        problems.append(f"max_aspect is long side / short side, so >= 1; got {options.max_aspect}")
    if (
        options.min_fps is not None
        and options.max_fps is not None
        and options.min_fps > options.max_fps
    ):
        problems.append(f"min_fps {options.min_fps} > max_fps {options.max_fps}")
    if not options.sources:
        problems.append("no sources given")
    if problems:
        raise UsageError("; ".join(problems))


def _stat(path: str) -> tuple[int, float] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime


def probe_row(path: str) -> dict:
    """A probe-cache row for `path`: its metadata, or its error (never raises on a bad file)."""
    try:
        info = probe_video(path)
    except MediaError as e:
        stat = _stat(path)
        return _error_row(path, *(stat or (None, None)), e.reason)
    return asdict(info) | {"error": None}


def _error_row(path: str, size: int | None, mtime: float | None, reason: str) -> dict:
    row = dict.fromkeys(PROBE_SCHEMA.names)
    return row | {"path": path, "bytes": size, "mtime": mtime, "error": reason}


def _probe_all(todo, probes, workers, progress, checkpoint, every_s) -> None:
    """Fill `probes` for every path in `todo`; checkpoint every `every_s` seconds."""
    workers = workers or os.cpu_count() or 1
    last = time.monotonic()
    console = Console(stderr=True)
    with Progress(console=console, disable=not progress) as bar:
        task = bar.add_task("probing", total=len(todo))

        def done(row: dict) -> None:
            nonlocal last
            probes[row["path"]] = row
            bar.advance(task)
            if time.monotonic() - last > every_s:
                checkpoint()
                last = time.monotonic()

        if workers == 1 or len(todo) <= 1:
            for path in todo:
                done(probe_row(path))
            return
        crashed = _probe_in_pool(todo, min(workers, len(todo)), done)
        # A decoder crash takes its whole pool down; retry those files one per process to
        # find the culprit without losing the innocent files that were queued beside it.
        for path in crashed:
            if _probe_in_pool([path], 1, done):
                done(_error_row(path, *(_stat(path) or (None, None)), "probe crashed the decoder"))


def _probe_in_pool(paths: list[str], workers: int, done) -> list[str]:
    """Probe `paths` in worker processes; return the paths lost to a crashed pool."""
    # spawn: the parent may hold torch threads or open files that must not be forked.
    context = multiprocessing.get_context("spawn")
    crashed = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(probe_row, path): path for path in paths}
        for future in as_completed(futures):
            try:
                done(future.result())
            except BrokenProcessPool:
                crashed.append(futures[future])
    return crashed


def _read_probe_cache(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        log.warning("ignoring unreadable probe cache %s (%s); probing everything", path, e)
        return {}
    if table.schema.names != PROBE_SCHEMA.names:
        return {}
    return {row["path"]: row for row in table.to_pylist() if row["bytes"] is not None}


def _caption(item: SourceItem) -> str:
    if item.caption is not None and item.caption.strip():
        return item.caption.strip()
    sidecar = Path(os.path.splitext(item.path)[0] + CAPTION_SUFFIX)
    try:
        return sidecar.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def clip_frames(row: dict, item: SourceItem) -> int:
    """Frames between the clip's start and end (the whole video when the listing gives neither)."""
    start = item.start or 0.0
    end = row["duration"] if item.end is None else min(item.end, row["duration"])
    if item.start is None and item.end is None:
        return row["num_frames"]
    return max(0, min(row["num_frames"], round((end - start) * row["fps"])))


def _filter_reason(row, item, caption, options: PrepareOptions, buckets) -> str | None:
    """The first filter a probed clip fails, as 'filter: numbers', or None."""
    frames = clip_frames(row, item)
    width, height, fps = row["width"], row["height"], row["fps"]
    short, long = min(width, height), max(width, height)
    if frames < options.min_frames:
        return f"min_frames: {frames} frames < {options.min_frames}"
    if short < options.min_size:
        return f"min_size: {width}x{height}, shorter side {short} < {options.min_size}"
    if options.max_aspect is not None and long / short > options.max_aspect:
        return f"max_aspect: {width}x{height} has aspect {long / short:.2f} > {options.max_aspect}"
    if options.min_fps is not None and fps < options.min_fps:
        return f"min_fps: {fps:.3f} fps < {options.min_fps}"
    if options.max_fps is not None and fps > options.max_fps:
        return f"max_fps: {fps:.3f} fps > {options.max_fps}"
    if options.require_caption and not caption:
        return "require_caption: no caption in the listing and no .txt sidecar"
    return None


def _bucket(row: dict, item: SourceItem, buckets: BucketConfig, seed: int) -> str | None:
    # Imported here: buckets.py needs torch, which probe workers must not pay to import.
    from vidcli.data.buckets import assign_bucket

    # The coin depends only on (seed, path, clip), so adding files never reshuffles other rows.
    key = f"{row['path']}|{item.start}|{item.end}".encode()
    rng = np.random.default_rng([seed, zlib.crc32(key)])
    info = VideoInfo(**{k: row[k] for k in VideoInfo.__dataclass_fields__})
    return assign_bucket(info, buckets, rng, num_frames=clip_frames(row, item))


def _no_bucket_reason(row: dict, item: SourceItem) -> str:
    frames = clip_frames(row, item)
    return f"buckets: no bucket fits {row['width']}x{row['height']} with {frames} frames"


def _rejection(row: dict, reason: str) -> dict:
    return {"path": row["path"], "reason": reason, "bytes": row["bytes"], "mtime": row["mtime"]}
