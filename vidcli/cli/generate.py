"""`vidcli generate`: prompts and sampling options become `[sample]` overrides; one pipeline run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli.cli.common import (
    DebugOpt,
    GpuMemoryOpt,
    JsonOpt,
    NprocOpt,
    PlanOpt,
    PrintRecipeOpt,
    QuietOpt,
    ResolvedRecipe,
    SetOpt,
    run_action,
)
from vidcli.errors import UsageError
from vidcli.recipe import dump_recipe

EXAMPLES = """
Examples:

    vidcli generate "a red circle moving right"

    vidcli generate "a blue square moving up" "a white triangle moving left" --seed 3 --out clips/

    vidcli generate --prompts-file prompts.txt --recipe recipes/opensora-v2-hcae.toml --json

    vidcli generate "a red kite" --nproc 2 --set launcher.sequence_parallel=2

    vidcli generate "a red circle moving right" --compile --json

    vidcli generate "a red circle moving right" "a blue square moving up" --compile-ae

    vidcli generate "golden retriever" --class 279 --cfg 1.5 \\
        --recipe recipes/dc-ae-uvit-h-in-512px.toml
"""


def generate(
    prompts: Annotated[
        list[str] | None,
        typer.Argument(help="Text prompts (ImageNet class names for a class-conditional recipe)."),
    ] = None,
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
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance", "--cfg", help="Guidance scale (text, or class: DC-AE-Diffusion)."
        ),
    ] = None,
    class_labels: Annotated[
        list[str] | None,
        typer.Option(
            "--class",
            help="ImageNet class id or name, one image each (repeatable; DC-AE-Diffusion).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Noise seed (same seed, same video).")] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            help="Training-free DiT caching METHOD[:VALUE]: none, uniform:K, teacache, adacache, "
            "toca:K, smoothcache, ditfastattn, fbcache, taylorseer:K, taylorseer-lite:K, foca:K, "
            "speca:K[:TAU], magcache:DELTA, easycache:TAU.",
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
    quantize: Annotated[
        str | None,
        typer.Option(
            help="DiT linears through torchao: none; int8-wo (int8 weights, any device: "
            "memory, not speed); fp8 (fp8 weights and activations, fp8 matmuls; CUDA SM 8.9+, "
            'bf16; pays with --compile). Needs pip install -e ".[quant]".'
        ),
    ] = None,
    compile_dit: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the DiT's forward (the first steps compile; --set "
            'sample.compile="blocks" compiles each repeated block class instead).',
        ),
    ] = False,
    compile_ae: Annotated[
        bool,
        typer.Option(
            "--compile-ae",
            help="torch.compile the DC-AE decoder (weights frozen; [sample] compile_ae). Each "
            "new latent or tile size compiles on its first decode (tens of s to minutes, "
            "timings compile_ae); decode then ran 1.1-1.3x (image), ~4x (fp32 video), 1.2x "
            "(bf16 video) faster on CPU. The encoder stays eager (compiled, the bf16 video "
            "encoder ran 0.67x). Refused for other AE families and with AE offload.",
        ),
    ] = False,
    image: Annotated[Path | None, typer.Option(help="First-frame image: image-to-video.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output file (refused if it exists, unless --overwrite), or a folder. Default "
            "names: outputs/NNN-<prompt>.mp4 (NNN: the prompt's number); a taken name gets the "
            "first free -1, -2, ... suffix, so a rerun never replaces a video (--overwrite "
            "replaces the first name instead).",
        ),
    ] = None,
    output_format: Annotated[
        str | None, typer.Option("--format", help="mp4 (default), gif or png (a folder of frames).")
    ] = None,
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
    nproc: NprocOpt = None,
    plan: PlanOpt = False,
    link_gb_s: Annotated[
        float | None,
        typer.Option(
            "--link-gb-s",
            min=0.001,
            help="--plan: host-to-device GB/s for block streaming's transfer time (default 25, "
            "PCIe 4.0 x16).",
        ),
    ] = None,
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
        from vidcli.compile import DEFAULT_MODE

        overrides = list(set_values or [])
        if nproc is not None:  # ranks of one sequence-parallel group ([launcher] sequence_parallel)
            overrides.append(f"launcher.nproc={nproc}")
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
            ("quantize", quantize),
            ("compile", json.dumps(DEFAULT_MODE) if compile_dit else None),
            ("compile_ae", "true" if compile_ae else None),
        ):
            if value is not None:
                overrides.append(f"sample.{key}={value}")
        if cache is not None:
            from vidcli.sampling.cache import parse_cache

            overrides.append(f"sample.cache={json.dumps(str(parse_cache(cache)))}")
        loaded = pipeline.load_generate_recipe(recipe, checkpoint, overrides)
        if print_recipe:
            return ResolvedRecipe(dump_recipe(loaded))
        from vidcli import class_generate

        if class_generate.is_class_conditional(loaded):
            video_only = {
                "--image": image is not None,
                "--lora": bool(lora),
                "--format": output_format not in (None, "png"),
                "--fps": fps is not None,
                "--snap": snap,
                "--offload": offload,
                "--raw-weights": raw_weights,
            }
            options = class_generate.ClassGenerateOptions(
                classes=[*(prompts or []), *_file_lines(prompts_file), *(class_labels or [])],
                out=out,
                batch_size=batch_size,
                overwrite=overwrite,
                device=device,
                dtype=dtype,
                unsupported=[flag for flag, used in video_only.items() if used],
            )
            if plan:
                return class_generate.plan(loaded, options, gpu_memory)
            return class_generate.run(loaded, options)
        if class_labels:
            raise UsageError(
                f"--class: {loaded.dit.preset} is not class-conditional; use a DC-AE-Diffusion "
                "recipe (recipes/dc-ae-*-in-512px.toml)"
            )
        if plan:
            from vidcli import plans
            from vidcli.plans.generate import LINK_GB_S

            return plans.generate_plan(
                loaded,
                device,
                dtype,
                gpu_memory,
                batch_size,
                image is not None,
                link_gb_s=LINK_GB_S if link_gb_s is None else link_gb_s,
            )
        options = pipeline.GenerateOptions(
            prompts=pipeline.collect_prompts(prompts or [], prompts_file),
            out=out,
            output_format=output_format or "mp4",
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

    run_action(action, as_json=json_output, quiet=quiet, debug=debug)


def _file_lines(path: Path | None) -> list[str]:
    """Non-empty lines of `--prompts-file` (none without one)."""
    if path is None:
        return []
    if not path.is_file():
        raise UsageError(f"--prompts-file {path}: file not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
