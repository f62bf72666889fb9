"""Training datasets: clips decoded from a manifest, or latents read from pre-extracted shards.

Both are safe in DataLoader workers: `__init__` reads only small tables (and the shards' footers)
into plain objects; files are opened per read, so no open file crosses a fork.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import OrderedDict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from vidcli.data.buckets import BucketConfig
from vidcli.data.parquet import decode_tensor
from vidcli.data.provenance import PROVENANCE_KEY
from vidcli.errors import StageFailed, UsageError
from vidcli.media import MediaError, read_frames

log = logging.getLogger(__name__)


class VideoDataset(Dataset):
    """Clips from a manifest as `video (3, T, H, W)` float in [-1, 1], with caption and row index.

    Each clip starts at its row's `start` (or 0 s) and takes `num_frames` frames, every `stride`-th
    or resampled to `fps`; frames are scaled to cover (height, width) and centre-cropped. With
    `buckets`, (T, H, W) come from each row's bucket instead. A clip that fails to decode is logged
    and replaced by the next row of the same bucket (same shape), so a batch never breaks.
    """

    def __init__(
        self,
        manifest_path: str | Path,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float | None = None,
        stride: int = 1,
        buckets: BucketConfig | None = None,
        max_replacements: int = 8,
    ):
        if buckets is None and None in (num_frames, height, width):
            raise UsageError("VideoDataset needs num_frames, height and width (or a bucket config)")
        if fps is not None and stride != 1:
            raise UsageError(f"give fps ({fps}) or stride ({stride}), not both")
        if stride < 1:
            raise UsageError(f"stride must be >= 1, got {stride}")
        table = pq.read_table(manifest_path)
        self.paths: list[str] = table.column("path").to_pylist()
        self.captions: list[str] = table.column("caption").to_pylist()
        self.starts: list[float | None] = table.column("start").to_pylist()
        self.ends: list[float | None] = table.column("end").to_pylist()
        self.buckets: list[str | None] = table.column("bucket").to_pylist()
        if buckets is not None and None in self.buckets:
            raise UsageError(
                f"{manifest_path}: rows without a bucket; rerun prepare-data with buckets"
            )
        self.bucket_config = buckets
        self.shape = (num_frames, height, width)
        self.fps, self.stride = fps, stride
        self.max_replacements = max_replacements

    def __len__(self) -> int:
        return len(self.paths)

    def clip_shape(self, index: int) -> tuple[int, int, int]:
        """(T, H, W) of row `index`."""
        if self.bucket_config is not None:
            return self.bucket_config.shape(self.buckets[index])
        return self.shape  # type: ignore[return-value]

    def load(self, index: int) -> torch.Tensor:
        """Row `index` as `(3, T, H, W)` in [-1, 1]; MediaError on a bad or short clip."""
        frames, height, width = self.clip_shape(index)
        array = read_frames(
            self.paths[index],
            start_s=self.starts[index],
            end_s=self.ends[index],
            num_frames=frames,
            stride=self.stride,
            target_fps=self.fps,
            size=(height, width),
        )
        if len(array) < frames:
            raise MediaError(self.paths[index], f"only {len(array)} of {frames} frames in the clip")
        video = torch.from_numpy(array).permute(3, 0, 1, 2)  # (T, H, W, 3) -> (3, T, H, W)
        return video.float().div_(127.5).sub_(1.0)

    def __getitem__(self, index: int) -> dict:
        for candidate in self._candidates(index):
            try:
                video = self.load(candidate)
            except (MediaError, OSError) as e:
                log.warning(
                    "skipping row %d (%s); trying the next clip of its bucket", candidate, e
                )
                continue
            return {"video": video, "caption": self.captions[candidate], "index": candidate}
        raise StageFailed(
            f"{self.max_replacements + 1} clips in a row failed to decode from row {index} on; "
            "rerun prepare-data on the source folder"
        )

    def _candidates(self, index: int) -> list[int]:
        """`index`, then the following rows (wrapping) with the same clip shape."""
        bucket = self.buckets[index] if self.bucket_config is not None else None
        order = ((index + k) % len(self) for k in range(len(self)))
        same = (i for i in order if bucket is None or self.buckets[i] == bucket)
        return list(itertools.islice(same, self.max_replacements + 1))


DEFAULT_LATENT_CACHE_BYTES = 512 << 20
"""Decoded row groups a `LatentDataset` keeps, per process (each DataLoader worker has its own)."""


class LatentDataset(Dataset):
    """Pre-extracted latents from `latents-*.parquet` shards (see `vidcli.data.latents`).

    Items: `latent (C, T, H, W)`, `text_tokens (L, D)`, `text_mask (L,)`, `text_pooled (Dp,)`,
    `content_latent (C, T, H, W)` from a conditioned AE's shards,
    `caption`, `index` (the manifest row).

    Training reads rows in a shuffled order across shards, so an item decodes only its shard's
    row group (`prepare-data --encode` writes groups of about `latents.ROW_GROUP_BYTES`), and
    decoded groups stay in a least-recently-used cache of at most `cache_bytes` Arrow bytes
    (the newest group is kept even when it alone is larger). Once every group has been read,
    a dataset that fits in the cache decodes nothing more; one that does not decodes at most
    one group per item.
    """

    def __init__(self, latents_dir: str | Path, cache_bytes: int = DEFAULT_LATENT_CACHE_BYTES):
        if cache_bytes < 0:
            raise UsageError(f"LatentDataset: cache_bytes must be >= 0, got {cache_bytes}")
        self.shards = sorted(Path(latents_dir).glob("latents-*.parquet"))
        if not self.shards:
            raise UsageError(
                f"no latents-*.parquet shards in {latents_dir}; run prepare-data --encode"
            )
        self.rows: list[tuple[int, int]] = []
        """(shard, row within the shard) of each item."""
        self._in_group: list[tuple[int, int]] = []  # (row group, row within it) of each item
        self.buckets: list[str | None] = []
        self._metadata: list[pq.FileMetaData] = []
        made_by: dict[bytes | None, Path] = {}
        for s, shard in enumerate(self.shards):
            table = pq.read_table(shard, columns=["bucket"])
            metadata = pq.read_metadata(shard)
            self._metadata.append(metadata)
            self.rows.extend((s, r) for r in range(metadata.num_rows))
            for g in range(metadata.num_row_groups):
                self._in_group.extend((g, r) for r in range(metadata.row_group(g).num_rows))
            self.buckets.extend(table.column("bucket").to_pylist())
            made_by.setdefault((table.schema.metadata or {}).get(PROVENANCE_KEY), shard)
        if len(made_by) > 1:
            first, other = list(made_by.values())[:2]
            raise UsageError(
                f"{latents_dir}: shards made with different settings or models ({first.name} vs "
                f"{other.name}); re-encode the folder with one recipe"
            )
        recorded = next(iter(made_by))
        self.provenance: dict | None = json.loads(recorded) if recorded else None
        """What made the shards (see `vidcli.data.provenance`); None for older shards."""
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[tuple[int, int], pa.Table] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        # Worker processes started by pickling get an empty cache, not the parent's groups.
        return {**vars(self), "_cache": OrderedDict(), "_cached_bytes": 0}

    def _group(self, s: int, g: int) -> pa.Table:
        """Row group `g` of shard `s`, decoded (cached, least recently used evicted first)."""
        key = (s, g)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        # The footer was read once in __init__; a file is still opened per read (fork-safe).
        group = pq.ParquetFile(self.shards[s], metadata=self._metadata[s]).read_row_group(g)
        self._cache[key] = group
        self._cached_bytes += group.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
        return group

    def __getitem__(self, index: int) -> dict:
        (s, _), (g, r) = self.rows[index], self._in_group[index]
        row = self._group(s, g).slice(r, 1).to_pylist()[0]  # converts this row only
        item = {
            "latent": decode_tensor(row, "latent"),
            "text_tokens": decode_tensor(row, "text_tokens"),
            "text_mask": decode_tensor(row, "text_mask"),
            "text_pooled": decode_tensor(row, "text_pooled"),
            "caption": row["caption"],
            "index": row["index"],
        }
        if "content_latent" in row:  # a conditioned AE's shards (Reducio)
            item["content_latent"] = decode_tensor(row, "content_latent")
        return item
