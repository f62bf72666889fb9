"""`vidcli prepare-data`: probe videos into a manifest, write a synthetic set, or encode latents."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli.cli.common import DebugOpt, JsonOpt, NprocOpt, QuietOpt, SetOpt, run_action
from vidcli.errors import UsageError
from vidcli.recipe import load_recipe

EXAMPLES = """
Examples:

    vidcli prepare-data clips/ --out data/

    vidcli prepare-data listing.csv --out data/ --min-frames 32 --require-caption

    vidcli prepare-data --synthetic shapes:64 --out data/shapes

    vidcli prepare-data clips/ --out data/ --encode recipes/hcae.toml --nproc 2
"""


def prepare_data(
    sources: Annotated[
        list[str] | None,
        typer.Argument(help="Folders, globs, or CSV/JSONL/Parquet listings with a `path` column."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("data"),
    workers: Annotated[int, typer.Option(min=0, help="Probe processes (0 = all cores).")] = 0,
    min_frames: Annotated[int, typer.Option(min=0, help="Reject shorter videos.")] = 0,
    min_size: Annotated[
        int, typer.Option(min=0, help="Reject videos whose short side is smaller.")
    ] = 0,
    max_aspect: Annotated[
        float, typer.Option(min=0, help="Reject aspect ratios (long/short) above this; 0 = off.")
    ] = 0.0,
    min_fps: Annotated[float, typer.Option(min=0, help="Reject lower frame rates.")] = 0.0,
    max_fps: Annotated[
        float, typer.Option("--fps-max", "--max-fps", min=0, help="Reject higher; 0 = off.")
    ] = 0.0,
    require_caption: Annotated[bool, typer.Option(help="Reject videos without a caption.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an existing --synthetic set; re-probe files probed before."),
    ] = False,
    synthetic: Annotated[
        str | None,
        typer.Option(help="Write a synthetic set instead, e.g. `shapes:64` (N captioned clips)."),
    ] = None,
    encode: Annotated[
        Path | None,
        typer.Option(help="Recipe whose [ae] and [text] pre-extract latents into --out."),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe whose [data] buckets assign each clip a bucket.")
    ] = None,
    nproc: NprocOpt = None,
    set_values: SetOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Probe videos into a Parquet manifest; optionally pre-extract latents for DiT training."""

    def action() -> Any:
        from vidcli.data import stage

        if synthetic:
            _check_synthetic_alone(
                sources=sources,
                min_frames=min_frames,
                min_size=min_size,
                max_aspect=max_aspect,
                min_fps=min_fps,
                fps_max=max_fps,
                require_caption=require_caption,
                encode=encode,
                recipe=recipe,
            )
            return stage.run_synthetic(synthetic, out, overwrite=overwrite)
        if encode is None and not sources:
            raise UsageError(
                "prepare-data needs at least one SOURCE (folder, glob or listing), "
                "or --synthetic shapes:N",
                hint="vidcli prepare-data clips/ --out data/",
            )
        options = stage.PrepareOptions(
            sources=list(sources or []),
            out_dir=out,
            workers=workers,
            min_frames=max(1, min_frames),
            min_size=min_size,
            max_aspect=max_aspect or None,
            min_fps=min_fps or None,
            max_fps=max_fps or None,
            require_caption=require_caption,
            overwrite=overwrite,
        )
        if encode is not None:
            # SOURCE given: probe it into --out first and encode that manifest, not [data]'s.
            loaded = load_recipe(encode, set_values or [])
            if sources:
                loaded = stage.prepare_for_encode(loaded, options)
            return stage.run_encode(loaded, out, nproc=nproc or loaded.launcher.nproc)
        buckets = load_recipe(recipe, set_values or []).data.buckets if recipe else None
        return stage.run_prepare(options, buckets)

    run_action(action, as_json=json_output, quiet=quiet, debug=debug)


def _check_synthetic_alone(**given: Any) -> None:
    """--synthetic writes clips and nothing else: the probe filters and SOURCE do not apply."""
    used = [
        "SOURCE" if name == "sources" else "--" + name.replace("_", "-")
        for name, value in given.items()
        if value
    ]
    if used:
        raise UsageError(
            f"--synthetic only writes the clips; {', '.join(used)} do not apply to it",
            hint="vidcli prepare-data --synthetic shapes:64 --out data/shapes, then "
            "vidcli prepare-data data/shapes/listing.jsonl --out data/ --min-frames ...",
        )
