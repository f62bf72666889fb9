"""`[data]` -> the manifest it names and the datasets the stages read.

The data package's one reader of the `[data]` recipe section: train-ae, train-dit and
`prepare-data --encode` all resolve their clips here, so a source is prepared the same way
whichever stage asks first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vidcli.console import log, progress_enabled
from vidcli.data.buckets import BucketConfig
from vidcli.data.datasets import LatentDataset, VideoDataset
from vidcli.data.prepare import MANIFEST_NAME, PrepareOptions, prepare
from vidcli.errors import UsageError
from vidcli.recipe import DataSection


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
    # The buckets are part of the key: each clip's bucket is decided when it is prepared.
    spec = data.source + (json.dumps(data.buckets, sort_keys=True) if data.buckets else "")
    key = hashlib.sha1(spec.encode()).hexdigest()[:10]
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
            # With buckets a clip's frame count picks its bucket; too short ones get none.
            min_frames=1 if data.buckets else data.num_frames * data.frame_stride,
            cache_dir=Path(data.cache_dir),
        ),
        buckets=bucket_config(data),
        progress=progress_enabled(),
    )
    if result.accepted == 0:
        raise UsageError(
            f"[data] source = {data.source!r}: no usable video (see {result.rejected})"
        )
    return result.manifest


def bucket_config(data: DataSection) -> BucketConfig | None:
    """`[data] buckets` parsed, or None when the recipe has none."""
    return BucketConfig.from_dict(data.buckets) if data.buckets else None


def video_dataset(data: DataSection, num_frames: int | None = None) -> VideoDataset:
    """Clips of `[data]` as (3, T, H, W) in [-1, 1]; with buckets, each row's bucket shape."""
    return VideoDataset(
        manifest_for(data),
        num_frames=num_frames or data.num_frames,
        height=data.height,
        width=data.width,
        stride=data.frame_stride,
        buckets=bucket_config(data),
    )


def latent_dataset(data: DataSection) -> LatentDataset:
    """Pre-extracted latent shards of `[data] latents`."""
    return LatentDataset(data.latents, cache_bytes=data.latent_cache_mb << 20)
