"""`prepare-data --encode`: encode every manifest clip and caption once, store them in shards.

Shard k (`latents-0000k.parquet`) holds manifest rows [k * shard_size, (k + 1) * shard_size);
rank r of a world of n encodes the shards with k % n == r. Each shard is written atomically and
carries a fingerprint of its rows and settings, so a rerun skips finished shards and redoes stale
ones: an interrupted run loses at most the shards in flight. Each shard also records what made it
(`provenance.py`: the AE, its weights hash and scaling, the text encoder, the clip settings); the
fingerprint covers all of it, so another AE or text encoder re-encodes every shard.

Columns: index (manifest row), path, caption, bucket, then latent (C, T, H, W), text_tokens
(L, D), text_mask (L,), text_pooled (Dp,), each as bytes + shape + dtype (see `parquet.py`),
in row groups of about `ROW_GROUP_BYTES` (the unit a shuffled reader decodes).
The latents are what `autoencoder.encode` returns (its scaling convention, unchanged); a
conditioned AE's (Reducio) are its reference latents, posterior samples, and its shards add
`content_latent` (C, T, H, W), the DiT's view of the clip's content frame (`models.content`).
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console
from rich.progress import Progress

from vidcli.data.buckets import BucketConfig
from vidcli.data.datasets import VideoDataset
from vidcli.data.parquet import encode_tensor, tensor_columns, write_parquet_atomic
from vidcli.data.provenance import PROVENANCE_KEY
from vidcli.errors import UsageError
from vidcli.media import MediaError
from vidcli.models.content import content_latent, encode_for_dit, needs_content

log = logging.getLogger(__name__)

SHARD_SCHEMA = pa.schema(
    [
        pa.field("index", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("bucket", pa.string()),
        *tensor_columns("latent"),
        *tensor_columns("text_tokens"),
        *tensor_columns("text_mask"),
        *tensor_columns("text_pooled"),
    ]
)
CONTENT_SHARD_SCHEMA = pa.schema([*SHARD_SCHEMA, *tensor_columns("content_latent")])
"""A conditioned AE's (Reducio) shards also hold each clip's `content_latent` (`models.content`)."""
FINGERPRINT_KEY = b"vidcli.fingerprint"
ROW_GROUP_BYTES = 16 << 20
"""Target size of a shard's row groups: training reads rows in a shuffled order and decodes
each row's whole group (`LatentDataset`), so groups are kept far smaller than a shard."""


class Encodes(Protocol):
    """The autoencoder interface used here."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


class EncodesText(Protocol):
    """The text encoder interface used here: `.encode(prompts)` -> tokens, mask, pooled."""

    def encode(self, prompts: list[str]) -> Any: ...


@dataclass
class LatentsResult:
    """What an encode run did on this rank."""

    out_dir: Path
    shards_written: int
    shards_skipped: int
    rows: int
    failed: int
    elapsed_s: float

    def stdout_lines(self) -> list[str]:
        return [str(self.out_dir)]


def shard_path(out_dir: Path, shard: int) -> Path:
    """`out_dir/latents-0000k.parquet`."""
    return Path(out_dir) / f"latents-{shard:05d}.parquet"


def encode_latents(
    manifest: str | Path,
    out_dir: str | Path,
    autoencoder: Encodes,
    text_encoder: EncodesText,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    fps: float | None = None,
    stride: int = 1,
    buckets: BucketConfig | None = None,
    batch_size: int = 1,
    shard_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
) -> LatentsResult:
    """Encode this rank's shards of `manifest` into `out_dir`; skips shards already done.

    `provenance`: the `ae` and `text` parts (see `provenance.recipe_provenance`); the `clip`
    part is added here from the settings.
    """
    started = time.perf_counter()
    if shard_size < 1 or batch_size < 1:
        raise UsageError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    if not 0 <= rank < world_size:
        raise UsageError(f"rank must be in [0, {world_size}), got {rank}")
    dataset = VideoDataset(manifest, num_frames, height, width, fps, stride, buckets)
    names = ("path", "bytes", "mtime", "start", "end")
    table = pq.read_table(manifest, columns=list(names))
    columns = (table.column(c).to_pylist() for c in names)
    keys = ["|".join(map(str, row)) for row in zip(*columns, strict=True)]
    clip = {"num_frames": num_frames, "height": height, "width": width, "fps": fps}
    clip |= {"frame_stride": stride, "buckets": repr(buckets), "dtype": str(dtype)}
    provenance = {**(provenance or {}), "clip": clip}
    settings = json.dumps(provenance, sort_keys=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = [k for k in range(-(-len(dataset) // shard_size)) if k % world_size == rank]

    written = skipped = rows = failed = 0
    with Progress(console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(f"encoding (rank {rank})", total=len(mine))
        for shard in mine:
            indices = list(range(shard * shard_size, min((shard + 1) * shard_size, len(dataset))))
            fingerprint = _fingerprint(settings, [keys[i] for i in indices])
            path = shard_path(out_dir, shard)
            if _fingerprint_of(path) == fingerprint:
                skipped += 1
            else:
                records, lost = _encode_shard(
                    dataset, indices, autoencoder, text_encoder, batch_size, device, dtype
                )
                schema = CONTENT_SHARD_SCHEMA if needs_content(autoencoder) else SHARD_SCHEMA
                shard_table = pa.Table.from_pylist(records, schema=schema)
                shard_table = shard_table.replace_schema_metadata(
                    {FINGERPRINT_KEY: fingerprint, PROVENANCE_KEY: settings.encode()}
                )
                write_parquet_atomic(shard_table, path, rows_per_group(shard_table))
                written, rows, failed = written + 1, rows + len(records), failed + lost
            bar.advance(task)
    return LatentsResult(out_dir, written, skipped, rows, failed, time.perf_counter() - started)


def rows_per_group(table: pa.Table, target_bytes: int | None = None) -> int:
    """Rows per row group so that a group holds about `target_bytes` of `table` (at least 1 row).

    `target_bytes`: None = `ROW_GROUP_BYTES`.
    """
    target_bytes = ROW_GROUP_BYTES if target_bytes is None else target_bytes
    per_row = table.nbytes / max(table.num_rows, 1)
    return max(1, int(target_bytes // max(per_row, 1)))


def _fingerprint(settings: str, keys: list[str]) -> bytes:
    rows = "\n".join(keys)
    return f"{zlib.crc32(settings.encode()):08x}-{zlib.crc32(rows.encode()):08x}".encode()


def _fingerprint_of(path: Path) -> bytes | None:
    if not path.is_file():
        return None
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return None
    return metadata.get(FINGERPRINT_KEY)


def _encode_shard(dataset, indices, autoencoder, text_encoder, batch_size, device, dtype):
    """Records of the rows that decode, and how many did not."""
    records, failed = [], 0
    batch: list[tuple[int, torch.Tensor]] = []

    def flush() -> None:
        if batch:
            records.extend(_encode_batch(dataset, batch, autoencoder, text_encoder, device, dtype))
            batch.clear()

    for i in indices:
        try:
            video = dataset.load(i)
        except (MediaError, OSError) as e:
            # A latent must belong to its own row, so a bad clip is left out, not replaced.
            log.warning("row %d left out of the latents: %s", i, e)
            failed += 1
            continue
        if batch and (batch[0][1].shape != video.shape or len(batch) == batch_size):
            flush()
        batch.append((i, video))
    flush()
    return records, failed


@torch.inference_mode()
def _encode_batch(dataset, batch, autoencoder, text_encoder, device, dtype) -> list[dict]:
    indices = [i for i, _ in batch]
    x = torch.stack([v for _, v in batch]).to(device=device, dtype=dtype)  # (B, 3, T, H, W)
    # A conditioned AE's latent is a posterior sample: its noise comes from the batch's first
    # row, so a rerun writes the same latents.
    latents = encode_for_dit(autoencoder, x, torch.Generator().manual_seed(indices[0]))
    conditions = None
    if needs_content(autoencoder):  # the DiT's view of each clip's content frame
        conditions = content_latent(autoencoder, autoencoder.content_frame(x))
    captions = [dataset.captions[i] for i in indices]
    text = text_encoder.encode(captions)
    records = []
    for b, i in enumerate(indices):
        record = {
            "index": i,
            "path": dataset.paths[i],
            "caption": captions[b],
            "bucket": dataset.buckets[i],
        }
        record |= encode_tensor("latent", latents[b])
        if conditions is not None:
            record |= encode_tensor("content_latent", conditions[b])
        record |= encode_tensor("text_tokens", text.tokens[b])
        record |= encode_tensor("text_mask", text.mask[b])
        record |= encode_tensor("text_pooled", text.pooled[b])
        records.append(record)
    return records
