"""Training datasets: clips decoded from a manifest, or latents read from pre-extracted shards.

Both are safe in DataLoader workers: `__init__` reads only small tables into plain lists; files
are opened per item, so nothing shared crosses a fork.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

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


class LatentDataset(Dataset):
    """Pre-extracted latents from `latents-*.parquet` shards (see `vidcli.data.latents`).

    Items: `latent (C, T, H, W)`, `text_tokens (L, D)`, `text_mask (L,)`, `text_pooled (Dp,)`,
    `caption`, `index` (the manifest row).
    """

    def __init__(self, latents_dir: str | Path):
        self.shards = sorted(Path(latents_dir).glob("latents-*.parquet"))
        if not self.shards:
            raise UsageError(
                f"no latents-*.parquet shards in {latents_dir}; run prepare-data --encode"
            )
        self.rows: list[tuple[int, int]] = []
        self.buckets: list[str | None] = []
        made_by: dict[bytes | None, Path] = {}
        for s, shard in enumerate(self.shards):
            table = pq.read_table(shard, columns=["bucket"])
            self.rows.extend((s, r) for r in range(table.num_rows))
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
        self._cached: tuple[int, list[dict]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _shard(self, s: int) -> list[dict]:
        # Items are usually read shard by shard, so one decoded shard per worker is enough.
        if self._cached is None or self._cached[0] != s:
            self._cached = (s, pq.read_table(self.shards[s]).to_pylist())
        return self._cached[1]

    def __getitem__(self, index: int) -> dict:
        s, r = self.rows[index]
        row = self._shard(s)[r]
        return {
            "latent": decode_tensor(row, "latent"),
            "text_tokens": decode_tensor(row, "text_tokens"),
            "text_mask": decode_tensor(row, "text_mask"),
            "text_pooled": decode_tensor(row, "text_pooled"),
            "caption": row["caption"],
            "index": row["index"],
        }
