"""Training data for both trainers: `[data]` -> a dataset, and which rows each step reads.

Rows for a step are a pure function of (seed, rank, step): every epoch is a seeded permutation,
rank r of W reads its own slice of each global batch, so resuming at step s reads exactly what an
uninterrupted run would have read at step s.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from vidcli.console import log, progress_enabled
from vidcli.data.datasets import LatentDataset, VideoDataset
from vidcli.errors import UsageError
from vidcli.recipe import DataSection

MANIFEST_NAME = "videos.parquet"


def manifest_for(data: DataSection) -> Path:
    """The manifest of `[data]`: `manifest` as given, or `source` prepared once into the cache."""
    if data.manifest:
        folder = Path(data.manifest)
        manifest = folder / MANIFEST_NAME if folder.is_dir() else folder
        if not manifest.is_file():
            raise UsageError(
                f"[data] manifest = {data.manifest!r}: no {MANIFEST_NAME} there",
                hint="vidcli prepare-data SOURCE --out DIR, then set data.manifest=DIR",
            )
        return manifest
    if not data.source:
        raise UsageError(
            "[data] needs a source (folder, glob, listing or synthetic:shapes:N), "
            "a manifest or latents",
            hint='--set data.source="synthetic:shapes:64"',
        )
    from vidcli.data.prepare import PrepareOptions, prepare

    key = hashlib.sha1(data.source.encode()).hexdigest()[:10]
    out_dir = Path(data.cache_dir) / f"prepared-{key}"
    manifest = out_dir / MANIFEST_NAME
    if not manifest.is_file():
        log.info("preparing %s into %s", data.source, out_dir)
    # prepare() is incremental: an unchanged source costs a stat per file.
    result = prepare(
        PrepareOptions(
            sources=[data.source],
            out_dir=out_dir,
            workers=1,
            min_frames=data.num_frames * data.frame_stride,
            cache_dir=Path(data.cache_dir),
        ),
        progress=progress_enabled(),
    )
    if result.accepted == 0:
        raise UsageError(
            f"[data] source = {data.source!r}: no usable video (see {result.rejected})"
        )
    return result.manifest


def video_dataset(data: DataSection, num_frames: int | None = None) -> VideoDataset:
    """Clips of `[data]` as (3, T, H, W) in [-1, 1]."""
    return VideoDataset(
        manifest_for(data),
        num_frames=num_frames or data.num_frames,
        height=data.height,
        width=data.width,
        stride=data.frame_stride,
    )


def latent_dataset(data: DataSection) -> LatentDataset:
    return LatentDataset(data.latents)


def rows_for_step(
    step: int, batch: int, rank: int, world: int, num_rows: int, seed: int
) -> list[int]:
    """The dataset rows rank `rank` reads at `step` (a global batch is `batch * world` rows)."""
    global_batch = batch * world
    first = step * global_batch + rank * batch
    rows = []
    for position in range(first, first + batch):
        epoch, offset = divmod(position, num_rows)
        order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch))
        rows.append(int(order[offset]))
    return rows


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """A generator for a step's own randomness (noise, timesteps, dropout coins)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))
