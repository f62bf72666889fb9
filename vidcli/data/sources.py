"""Turn SOURCE arguments into a list of files to probe: folders, globs, listings, synthetic sets.

A listing is a CSV / JSONL / Parquet table with a `path` column (relative paths are relative to
the listing) and optional `caption`, `start`, `end` (seconds) columns.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from vidcli.data.synthetic import is_synthetic_source, resolve_synthetic_source
from vidcli.errors import UsageError

LISTING_SUFFIXES = (".csv", ".jsonl", ".parquet")
CAPTION_SUFFIX = ".txt"


@dataclass(frozen=True)
class SourceItem:
    """One file to probe, with what its listing said about it."""

    path: str
    """Absolute path of the file."""
    caption: str | None = None
    """Caption from a listing; None means: look for a `.txt` sidecar."""
    start: float | None = None
    """Clip start in seconds (None: the beginning)."""
    end: float | None = None
    """Clip end in seconds (None: the end)."""


def resolve_sources(specs: list[str], cache_dir: str | Path | None = None) -> list[SourceItem]:
    """Every clip named by `specs`, in order, each once (the first mention wins).

    A clip is a file and its (start, end): a listing may cut several clips from one video, and
    each is its own item. A file named again with the same span (a folder and a listing that
    both hold it, say) is one item.
    """
    items: list[SourceItem] = []
    seen: set[tuple[str, float | None, float | None]] = set()
    for spec in specs:
        for item in _resolve_one(spec, cache_dir):
            key = (item.path, item.start, item.end)
            if key not in seen:
                seen.add(key)
                items.append(item)
    return items


def _resolve_one(spec: str, cache_dir: str | Path | None) -> list[SourceItem]:
    if is_synthetic_source(spec):
        if cache_dir is None:
            raise UsageError(f"source {spec!r} needs a cache folder to generate its clips in")
        return read_listing(resolve_synthetic_source(spec, cache_dir))
    path = Path(spec).expanduser()
    if path.is_dir():
        return [SourceItem(p) for p in scan_folder(path)]
    if path.is_file():
        if path.suffix.lower() in LISTING_SUFFIXES:
            return read_listing(path)
        return [SourceItem(str(path.resolve()))]
    if glob.has_magic(spec):
        matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
        if not matches:
            raise UsageError(f"source glob {spec!r} matches no files")
        return [SourceItem(str(Path(m).resolve())) for m in matches if Path(m).is_file()]
    raise UsageError(
        f"source {spec!r} not found; give a folder, a glob, a .csv/.jsonl/.parquet listing, "
        "a video file or synthetic:shapes:N"
    )


def scan_folder(folder: Path) -> list[str]:
    """Every file under `folder` except caption sidecars (`clip.txt` beside `clip.mp4`)."""
    files = sorted(str(p.resolve()) for p in folder.rglob("*") if p.is_file())
    stems = {os.path.splitext(f)[0] for f in files if not f.endswith(CAPTION_SUFFIX)}
    return [
        f for f in files if not (f.endswith(CAPTION_SUFFIX) and f[: -len(CAPTION_SUFFIX)] in stems)
    ]


def read_listing(listing: Path) -> list[SourceItem]:
    """Rows of a CSV / JSONL / Parquet listing; needs a `path` column."""
    table = _read_table(listing)
    if "path" not in table.column_names:
        raise UsageError(
            f"{listing}: no 'path' column; columns are {', '.join(table.column_names)}"
        )
    columns = {
        name: table.column(name).to_pylist()
        for name in ("path", "caption", "start", "end")
        if name in table.column_names
    }
    base = listing.resolve().parent
    items = []
    for i, raw in enumerate(columns["path"]):
        if not raw:
            raise UsageError(f"{listing}: row {i} has an empty path")
        path = Path(str(raw)).expanduser()
        caption = columns.get("caption", [None] * len(columns["path"]))[i]
        items.append(
            SourceItem(
                path=str(path if path.is_absolute() else (base / path).resolve()),
                caption=None if caption is None else str(caption),
                start=_seconds(columns, "start", i, listing),
                end=_seconds(columns, "end", i, listing),
            )
        )
    return items


def _read_table(listing: Path) -> pa.Table:
    suffix = listing.suffix.lower()
    try:
        if suffix == ".parquet":
            return pq.read_table(listing)
        if suffix == ".jsonl":
            return pa_json.read_json(listing)
        # Read every column as text: paths like "001.mp4" must not turn into numbers.
        head = pa_csv.read_csv(listing, read_options=pa_csv.ReadOptions(skip_rows_after_names=0))
        types = {n: pa.string() for n in head.column_names if n not in ("start", "end")}
        return pa_csv.read_csv(listing, convert_options=pa_csv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, OSError) as e:
        raise UsageError(f"{listing}: cannot read listing ({e})") from e


def _seconds(columns: dict[str, list], name: str, i: int, listing: Path) -> float | None:
    value = columns.get(name, [None] * (i + 1))[i]
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{listing}: row {i} column {name!r} is not seconds: {value!r}") from e
