"""The `vidcli` command line: each command turns its options into a recipe and calls one stage.

No model, data or training logic lives here. Stage modules are imported inside the commands so
that `vidcli --help` answers without importing torch.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli import __version__
from vidcli.console import configure, print_result, report_error, stdout_to_stderr
from vidcli.errors import UsageError
from vidcli.recipe import Recipe, dump_recipe, load_recipe

app = typer.Typer(
    name="vidcli",
    help="Train and run text-to-video diffusion models in the latent space of "
    "high-compression video autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (logs stay on stderr).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks (also VIDCLI_DEBUG=1).", envvar=None)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe value: `--set train.lr=1e-4` (TOML literal). Repeatable.",
    ),
]
PrintRecipeOpt = Annotated[
    bool, typer.Option("--print-recipe", help="Print the fully resolved recipe as TOML and exit.")
]
NprocOpt = Annotated[int | None, typer.Option("--nproc", min=1, help="Local ranks to spawn.")]
PlanOpt = Annotated[
    bool,
    typer.Option("--plan", help="Print the memory plan (nothing is loaded) and exit."),
]
GpuMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory",
        min=1,
        help="Device memory in GB (1e9 bytes) for --plan; default: the GPU's.",
    ),
]


def _run(action: Callable[[], Any], *, as_json: bool, quiet: bool, debug: bool) -> None:
    """Run one stage action; print its result, or turn its exception into one line + exit code."""
    configure(quiet=quiet, debug=debug)
    try:
        with stdout_to_stderr():
            result = action()
    except (Exception, KeyboardInterrupt) as err:
        code = 130 if isinstance(err, KeyboardInterrupt) else report_error(err)
        raise typer.Exit(code) from None
    if result is not None:
        print_result(result, as_json)


def _load(recipe_path: Path | None, overrides: list[str]) -> Recipe:
    return load_recipe(recipe_path, overrides)


@dataclass
class ResolvedRecipe:
    """`--print-recipe`: the fully resolved recipe as TOML."""

    recipe: str

    def stdout_lines(self) -> list[str]:
        return self.recipe.splitlines()


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vidcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """vidcli: high-compression latent video diffusion from the shell.

    Every command takes `--json` (one JSON object on stdout), `--quiet` and `--debug`;
    exit codes: 0 ok, 1 runtime failure, 2 usage or recipe error.
    """


# ------------------------------------------------------------------------------------- download

DOWNLOAD_EXAMPLES = """
Examples:

    vidcli download --list

    vidcli download opensora-v2-hcae --local-dir weights/hcae

    vidcli download mit-han-lab/dc-ae-f32c32-in-1.0-diffusers --include "*.json" --json
"""


@app.command(epilog=DOWNLOAD_EXAMPLES)
def download(
    repo: Annotated[
        str | None, typer.Argument(help="A Hub repo id (owner/name) or a vidcli alias.")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Skip files matching this glob.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    local_dir: Annotated[
        Path | None, typer.Option("--local-dir", help="Put the files here, not in the cache.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token for gated or private repos (or HF_TOKEN).")
    ] = None,
    list_aliases: Annotated[
        bool, typer.Option("--list", help="List the aliases vidcli knows.")
    ] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Download weights from the Hugging Face Hub (resumable; offline with HF_HUB_OFFLINE=1)."""

    def action() -> Any:
        if repo is None and not list_aliases:
            raise UsageError("download needs a repo id or alias", hint="vidcli download --list")
        from vidcli import hub

        if list_aliases:
            return hub.AliasList(hub.list_aliases())
        return hub.download(
            repo,
            include=include,
            exclude=exclude,
            revision=revision,
            local_dir=local_dir,
            token=token,
        )

    _run(action, as_json=json_output, quiet=quiet, debug=debug)


# --------------------------------------------------------------------------------- prepare-data

PREPARE_EXAMPLES = """
Examples:

    vidcli prepare-data clips/ --out data/

    vidcli prepare-data listing.csv --out data/ --min-frames 32 --require-caption

    vidcli prepare-data --synthetic shapes:64 --out data/shapes

    vidcli prepare-data clips/ --out data/ --encode recipes/hcae.toml --nproc 2
"""


@app.command("prepare-data", epilog=PREPARE_EXAMPLES)
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
            loaded = _load(encode, set_values or [])
            if sources:
                loaded = stage.prepare_for_encode(loaded, options)
            return stage.run_encode(loaded, out, nproc=nproc or loaded.launcher.nproc)
        buckets = _load(recipe, set_values or []).data.buckets if recipe else None
        return stage.run_prepare(options, buckets)

    _run(action, as_json=json_output, quiet=quiet, debug=debug)


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


# ------------------------------------------------------------------------------------ training

TRAIN_AE_EXAMPLES = """
Examples:

    vidcli train-ae recipes/demo-ae.toml

    vidcli train-ae recipes/video-dcae.toml --nproc 8 --set train.lr=5e-5

    vidcli train-ae recipes/demo-ae.toml --resume latest
"""

TRAIN_DIT_EXAMPLES = """
Examples:

    vidcli train-dit recipes/demo-dit.toml

    vidcli train-dit recipes/hcae.toml --nproc 8 --set launcher.zero_stage=2

    vidcli train-dit recipes/hcae.toml --hostfile hosts.txt

    vidcli train-dit recipes/demo-dit.toml --resume runs/demo-dit/checkpoints/step-0000100
"""

RecipeArg = Annotated[Path, typer.Argument(help="TOML recipe (see recipes/).")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", help="Output folder (default: [train] output).")
]
ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue a run exactly where it stopped: from the newest checkpoint of the output "
        "folder (bare `--resume`, or `--resume latest`) or from a checkpoint folder vidcli wrote.",
    ),
]
HostfileOpt = Annotated[
    Path | None,
    typer.Option(
        "--hostfile",
        help="DeepSpeed hostfile: run on many nodes (slots set the ranks per node). The output "
        "folder must be on storage every node mounts at the same path.",
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Start afresh in an output folder that holds another run, removing it."
    ),
]


def _train(
    stage_name: str,
    recipe_path: Path,
    set_values: list[str] | None,
    output: Path | None,
    resume: str | None,
    nproc: int | None,
    hostfile: Path | None,
    print_recipe: bool,
    plan: bool = False,
    gpu_memory: float | None = None,
    overwrite: bool = False,
) -> Any:
    overrides = list(set_values or [])
    if output is not None:
        overrides.append(f"train.output={json.dumps(str(output))}")
    if nproc is not None:
        overrides.append(f"launcher.nproc={nproc}")
    if hostfile is not None:
        overrides.append(f"launcher.hostfile={json.dumps(str(hostfile))}")
    recipe = _load(recipe_path, overrides)
    if print_recipe:
        return ResolvedRecipe(dump_recipe(recipe))
    if plan:
        if stage_name != "dit":
            raise UsageError("--plan is available for train-dit")
        from vidcli import memory_plan

        return memory_plan.train_plan(recipe, gpu_memory)
    from vidcli.train import launcher

    return launcher.launch(
        stage_name, recipe, recipe_path=recipe_path, resume=resume, overwrite=overwrite
    )


def _train_command(stage: str, help_text: str) -> Callable[..., None]:
    """One `train-<stage>` command: both trainers take the same options."""

    def command(
        recipe: RecipeArg,
        set_values: SetOpt = None,
        output: OutputOpt = None,
        resume: ResumeOpt = None,
        nproc: NprocOpt = None,
        hostfile: HostfileOpt = None,
        overwrite: OverwriteOpt = False,
        print_recipe: PrintRecipeOpt = False,
        plan: PlanOpt = False,
        gpu_memory: GpuMemoryOpt = None,
        json_output: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        _run(
            lambda: _train(
                stage,
                recipe,
                set_values,
                output,
                resume,
                nproc,
                hostfile,
                print_recipe,
                plan,
                gpu_memory,
                overwrite=overwrite,
            ),
            as_json=json_output,
            quiet=quiet,
            debug=debug,
        )

    command.__doc__ = help_text
    return command


train_ae = app.command("train-ae", epilog=TRAIN_AE_EXAMPLES)(
    _train_command(
        "ae", "Train a DC-AE video autoencoder (reconstruction + LPIPS, optional GAN) on DeepSpeed."
    )
)
train_dit = app.command("train-dit", epilog=TRAIN_DIT_EXAMPLES)(
    _train_command(
        "dit", "Train an MMDiT with rectified flow on AE latents (pre-extracted or on the fly)."
    )
)


# ------------------------------------------------------------------------------------ generate

GENERATE_EXAMPLES = """
Examples:

    vidcli generate "a red circle moving right"

    vidcli generate "a blue square moving up" "a white triangle moving left" --seed 3 --out clips/

    vidcli generate --prompts-file prompts.txt --recipe recipes/opensora-v2-hcae.toml --json
"""


@app.command(epilog=GENERATE_EXAMPLES)
def generate(
    prompts: Annotated[list[str] | None, typer.Argument(help="Text prompts.")] = None,
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts-file", help="One prompt per line.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe (default: the bundled demo model).")
    ] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A train-dit checkpoint folder to sample from.")
    ] = None,
    frames: Annotated[int | None, typer.Option(help="Frames to generate.")] = None,
    height: Annotated[int | None, typer.Option(help="Height in pixels.")] = None,
    width: Annotated[int | None, typer.Option(help="Width in pixels.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the output.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Text guidance scale.")] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed (same seed, same video).")] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            help="Training-free DiT caching METHOD[:VALUE]: none, uniform:K, teacache, adacache, "
            "toca:K, smoothcache, ditfastattn, fbcache, taylorseer:K, taylorseer-lite:K.",
        ),
    ] = None,
    solver: Annotated[
        str | None, typer.Option(help="ODE solver: euler, or rf2 (RF-Solver, 2nd order).")
    ] = None,
    lpl: Annotated[
        bool, typer.Option("--lpl", help="Linear Proportional Leap: stop early, leap to the end.")
    ] = False,
    tdtm_steps: Annotated[
        int | None, typer.Option(help="Merge latent frame pairs in attention for N steps.")
    ] = None,
    sparse_attention: Annotated[
        str | None,
        typer.Option(help="off, window, sta or frame_tile (more keys: --set sample.sparse_*)."),
    ] = None,
    image: Annotated[Path | None, typer.Option(help="First-frame image: image-to-video.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output file, or a folder for several prompts.")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="mp4, gif or png (a folder of frames).")
    ] = "mp4",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts sampled together.")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    snap: Annotated[
        bool, typer.Option(help="Round frames/size to the nearest the model accepts.")
    ] = False,
    offload: Annotated[
        bool, typer.Option(help="Keep the text encoder and AE off the GPU when idle.")
    ] = False,
    raw_weights: Annotated[
        bool,
        typer.Option(
            "--raw-weights", help="Sample a checkpoint's raw weights, not its EMA (the default)."
        ),
    ] = False,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="LoRA file PATH[:scale] merged into the DiT (repeatable; diffusers or ComfyUI "
            "layout).",
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default: CUDA when available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="bf16, fp16 or fp32 (default: bf16 on CUDA, fp32 on CPU).")
    ] = None,
    plan: PlanOpt = False,
    gpu_memory: GpuMemoryOpt = None,
    set_values: SetOpt = None,
    print_recipe: PrintRecipeOpt = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Generate videos from text prompts (offline, on the bundled demo model by default)."""

    def action() -> Any:
        from vidcli import generate as pipeline

        overrides = list(set_values or [])
        for key, value in (
            ("frames", frames),
            ("height", height),
            ("width", width),
            ("fps", fps),
            ("steps", steps),
            ("guidance", guidance),
            ("seed", seed),
            ("solver", solver),
            ("lpl", "true" if lpl else None),
            ("tdtm_steps", tdtm_steps),
            ("sparse_attention", sparse_attention),
        ):
            if value is not None:
                overrides.append(f"sample.{key}={value}")
        if cache is not None:
            from vidcli.sampling.cache import parse_cache

            overrides.append(f"sample.cache={json.dumps(str(parse_cache(cache)))}")
        loaded = pipeline.load_generate_recipe(recipe, checkpoint, overrides)
        if print_recipe:
            return ResolvedRecipe(dump_recipe(loaded))
        if plan:
            from vidcli import memory_plan

            return memory_plan.generate_plan(
                loaded, device, dtype, gpu_memory, batch_size, image is not None
            )
        options = pipeline.GenerateOptions(
            prompts=pipeline.collect_prompts(prompts or [], prompts_file),
            out=out,
            output_format=output_format,
            image=image,
            batch_size=batch_size,
            overwrite=overwrite,
            snap=snap,
            offload=offload,
            raw_weights=raw_weights,
            device=device,
            dtype=dtype,
            loras=list(lora or []),
        )
        return pipeline.run(loaded, options)

    _run(action, as_json=json_output, quiet=quiet, debug=debug)


# ----------------------------------------------------------------------------------- benchmark

BENCHMARK_EXAMPLES = """
Examples:

    vidcli benchmark --compare-ae

    vidcli benchmark --compare-ae --device cuda --dtype bf16 --plot speedup.png --json

    vidcli benchmark --compare-ae --ae dc-ae-f8t4c16:2 --ae dc-ae-f32t4c128:1 --dit mmdit-s

    vidcli benchmark --caching --plot pareto.png --csv caching.csv

    vidcli benchmark --caching --calibrate --steps 20 --methods teacache:0.2 --methods toca:4
"""


@app.command(epilog=BENCHMARK_EXAMPLES)
def benchmark(
    compare_ae: Annotated[
        bool, typer.Option("--compare-ae", help="High-compression AE vs baseline: DiT speed.")
    ] = False,
    ae: Annotated[
        list[str] | None,
        typer.Option("--ae", help="PRESET:PATCH to compare; repeat (first = baseline)."),
    ] = None,
    dit: Annotated[str | None, typer.Option(help="DiT preset for every row.")] = None,
    resolution: Annotated[
        int | None, typer.Option(help="Video height in pixels (16:9 width).")
    ] = None,
    frames: Annotated[int | None, typer.Option(help="Frames per video.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Videos per step.")] = 1,
    steps: Annotated[
        int | None,
        typer.Option(
            min=1, help="Denoising steps counted in the video time (--caching: every row; 50)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda (default: cuda when available).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="fp32 or bf16 (default: bf16 on CUDA, fp32 on CPU).")
    ] = None,
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per measurement.")] = 3,
    csv: Annotated[Path | None, typer.Option(help="Also write the rows as CSV.")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write a PNG bar chart of the speedups.")
    ] = None,
    quality: Annotated[
        Path | None, typer.Option(help="prepare-data folder: reconstruction PSNR/SSIM per AE.")
    ] = None,
    ae_weights: Annotated[
        list[str] | None, typer.Option("--ae-weights", help="PRESET=PATH weights for --quality.")
    ] = None,
    text_tokens: Annotated[
        int | None, typer.Option(min=1, help="Text tokens per sample (default 32 CPU, 512 CUDA).")
    ] = None,
    dit_blocks: Annotated[
        str | None, typer.Option(help="DOUBLE,SINGLE blocks of the DiT preset to keep, e.g. 2,4.")
    ] = None,
    ae_timing: Annotated[
        str, typer.Option(help="auto, probe (small clip scaled by voxels) or full.")
    ] = "auto",
    quality_clips: Annotated[int, typer.Option(min=1, help="Clips scored by --quality.")] = 4,
    grad_checkpointing: Annotated[
        str, typer.Option(help="compare-ae DiT steps: auto (when memory is short), on or off.")
    ] = "auto",
    attention: Annotated[
        bool, typer.Option("--attention", help="Time the attention backends.")
    ] = False,
    kernels: Annotated[
        bool, typer.Option("--kernels", help="Time each kernel against its reference.")
    ] = False,
    caching: Annotated[
        bool,
        typer.Option("--caching", help="Every caching method vs uncached and the uniform control."),
    ] = False,
    methods: Annotated[
        list[str] | None,
        typer.Option("--methods", help="--caching rows METHOD:VALUE (repeat; default: a grid)."),
    ] = None,
    samplers: Annotated[
        bool,
        typer.Option("--samplers", help="--caching: add rf2 (half the steps), LPL and TDTM rows."),
    ] = False,
    calibrate: Annotated[
        bool,
        typer.Option(
            "--calibrate", help="--caching: first calibrate TeaCache/SmoothCache/DiTFastAttn."
        ),
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(help="--caching calibration file (default: beside the DiT weights)."),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="--caching: the model's recipe (default: the demo).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="--caching: also write the JSON result here.")
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Measure what vidcli claims: DiT step, generation and AE times per autoencoder."""

    def action() -> Any:
        from vidcli.devices import dtype_name, resolve_device, resolve_dtype

        where = resolve_device(device)
        from vidcli import benchmark as bench

        if caching:
            from vidcli.benchmark import caching as caching_bench

            if compare_ae or attention or kernels:
                raise UsageError("--caching runs alone; drop --compare-ae/--attention/--kernels")
            return caching_bench.run(
                caching_bench.CachingOptions(
                    recipe=recipe,
                    steps=steps or 50,
                    methods=list(methods or []),
                    samplers=samplers,
                    calibrate=calibrate,
                    calibration=calibration,
                    csv=csv,
                    plot=plot,
                    output=output,
                )
            )
        if not (compare_ae or attention or kernels):
            raise UsageError(
                "choose a benchmark: --compare-ae, --attention, --kernels or --caching",
                hint="vidcli benchmark --compare-ae",
            )
        options = bench.BenchmarkOptions(
            compare_ae=compare_ae,
            ae=list(ae or []),
            dit=dit,
            resolution=resolution,
            frames=frames,
            batch_size=batch_size,
            steps=steps or 30,
            device=where.type,
            dtype=dtype or dtype_name(resolve_dtype(None, where)),
            repeat=repeat,
            csv=csv,
            plot=plot,
            quality=quality,
            ae_weights=list(ae_weights or []),
            attention=attention,
            kernels=kernels,
            text_tokens=text_tokens,
            dit_blocks=dit_blocks,
            ae_timing=ae_timing,
            quality_clips=quality_clips,
            grad_checkpointing=grad_checkpointing,
        )
        return bench.run(options)

    _run(action, as_json=json_output, quiet=quiet, debug=debug)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=bare_resume_means_latest(sys.argv[1:] if argv is None else argv))


def bare_resume_means_latest(args: list[str]) -> list[str]:
    """In `train-ae` / `train-dit`, a `--resume` with no value (last, or before another option)
    becomes `--resume latest`: Typer has no option with an optional value."""
    if not {"train-ae", "train-dit"} & set(args):
        return list(args)
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("latest")
    return out
