"""`vidcli prepare-data`: the stage entry points the CLI calls (probe, synthetic set, encode)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from vidcli.console import log, progress_enabled
from vidcli.data.buckets import BucketConfig
from vidcli.data.latents import LatentsResult
from vidcli.data.prepare import PrepareOptions, PrepareResult, prepare
from vidcli.data.synthetic import is_synthetic_source, make_shapes_dataset
from vidcli.errors import UsageError
from vidcli.recipe import Recipe

__all__ = [
    "PrepareOptions",
    "prepare_for_encode",
    "run_encode",
    "run_prepare",
    "run_synthetic",
    "with_manifest",
]


@dataclass
class SyntheticResult:
    """A written synthetic set: its listing (usable as a prepare-data SOURCE) and clip count."""

    out_dir: Path
    listing: Path
    clips: int

    def stdout_lines(self) -> list[str]:
        return [str(self.listing)]


def run_prepare(options: PrepareOptions, buckets: dict | None = None) -> PrepareResult:
    """Probe the sources into `videos.parquet` + `rejected.parquet`."""
    config = BucketConfig.from_dict(buckets) if buckets else None
    result = prepare(options, buckets=config, progress=progress_enabled())
    log.info(
        "%d accepted, %d rejected, %d unchanged, %d without caption",
        result.accepted,
        result.rejected_count,
        result.skipped_unchanged,
        result.missing_captions,
    )
    return result


def run_synthetic(
    spec: str, out_dir: Path, seed: int = 0, overwrite: bool = False
) -> SyntheticResult:
    """`--synthetic shapes:N`: N captioned moving-shape clips written with PyAV.

    An existing set in `out_dir` is replaced only with `overwrite`.
    """
    if not is_synthetic_source(spec):
        raise UsageError(f"--synthetic {spec}: expected shapes:N, e.g. shapes:64")
    n = int(spec.rsplit(":", 1)[1])
    listing = make_shapes_dataset(out_dir, n, seed=seed, overwrite=overwrite)
    return SyntheticResult(out_dir=out_dir, listing=listing, clips=n)


def prepare_for_encode(recipe: Recipe, options: PrepareOptions) -> Recipe:
    """`prepare-data SOURCE --encode R`: probe SOURCE into `options.out_dir`; R reads that manifest.

    Clips must hold the recipe's `num_frames * frame_stride` frames (with `[data] buckets`, the
    buckets decide) and pass the command line's filters.
    """
    data = recipe.data
    if not data.buckets:
        options.min_frames = max(options.min_frames, data.num_frames * data.frame_stride)
    prepared = run_prepare(options, data.buckets or None)
    if prepared.accepted == 0:
        raise UsageError(
            f"{', '.join(options.sources)}: no clip to encode, all {prepared.rejected_count} "
            f"rejected (see {prepared.rejected})"
        )
    return with_manifest(recipe, prepared.manifest)


def with_manifest(recipe: Recipe, manifest: Path) -> Recipe:
    """`recipe` whose `[data]` reads `manifest` (a prepare-data output) instead of its source."""
    data = dataclasses.replace(recipe.data, manifest=str(manifest), source="", latents="")
    return dataclasses.replace(recipe, data=data)


def run_encode(recipe: Recipe, out_dir: Path, nproc: int = 1) -> LatentsResult:
    """Pre-extract latents + text embeddings of the recipe's `[data]` with its `[ae]` / `[text]`.

    With `nproc > 1` (or under torchrun) each rank writes its own shards.
    """
    import os
    import subprocess
    import sys
    import tempfile

    from vidcli.recipe import write_resolved_recipe

    in_job = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if nproc > 1 and not in_job:
        with tempfile.TemporaryDirectory(prefix="vidcli-encode-") as tmp:
            recipe_file = write_resolved_recipe(recipe, tmp)
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node"]
            command += [str(nproc), "-m", "vidcli", "prepare-data", "--out", str(out_dir)]
            command += ["--encode", str(recipe_file)]
            started = time.perf_counter()
            if subprocess.run(command).returncode != 0:
                raise UsageError(f"prepare-data --encode failed on one of {nproc} ranks")
        shards = sorted(Path(out_dir).glob("latents-*.parquet"))
        rows = sum(pq.read_metadata(shard).num_rows for shard in shards)
        return LatentsResult(Path(out_dir), len(shards), 0, rows, 0, time.perf_counter() - started)
    return _encode_this_rank(recipe, out_dir)


def _encode_this_rank(recipe: Recipe, out_dir: Path) -> LatentsResult:
    import os

    from vidcli.builders import autoencoder_from_section, text_encoder_from_section
    from vidcli.data.latents import encode_latents
    from vidcli.data.provenance import recipe_provenance
    from vidcli.data.section import bucket_config, manifest_for
    from vidcli.devices import rank_device

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = rank_device()  # cuda:LOCAL_RANK: ranks of one node must not share GPU 0
    ae = autoencoder_from_section(recipe.ae).to(device).eval()
    text = text_encoder_from_section(recipe.text, device=device)
    data = recipe.data
    provenance = recipe_provenance(recipe.ae, ae, recipe.text)
    return encode_latents(
        manifest_for(data),
        out_dir,
        ae,
        text,
        num_frames=data.num_frames,
        height=data.height,
        width=data.width,
        stride=data.frame_stride,
        batch_size=recipe.train.batch_size,
        rank=rank,
        world_size=world,
        device=device,
        progress=progress_enabled(),
        buckets=bucket_config(data),
        provenance=provenance,
    )
