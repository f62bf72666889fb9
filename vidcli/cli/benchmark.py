"""`vidcli benchmark`: the compare-ae, attention and kernel timings, or the caching benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli.cli.common import DebugOpt, JsonOpt, QuietOpt, run_action
from vidcli.errors import UsageError

EXAMPLES = """
Examples:

    vidcli benchmark --compare-ae

    vidcli benchmark --compare-ae --device cuda --dtype bf16 --plot speedup.png --json

    vidcli benchmark --compare-ae --ae dc-ae-f8t4c16:2 --ae dc-ae-f32t4c128:1 --dit mmdit-s

    vidcli benchmark --compare-ae --compile --compile-mode blocks --repeat 5

    vidcli benchmark --compare-ae --dit opensora-v2-11b --dit-blocks 1,1 --resolution 768 \
        --frames 5 --text-tokens 512 --steps 2 --repeat 2

    vidcli benchmark --caching --plot pareto.png --csv caching.csv

    vidcli benchmark --compare-ae --image --dit uvit-h --dit-blocks 2 --json

    vidcli benchmark --caching --calibrate --steps 20 --methods teacache:0.2 --methods toca:4

    vidcli benchmark --fid --reference in512.npz --images outputs/ --inception fid.safetensors

    vidcli benchmark --fid --reference val/ --recipe recipes/dc-ae-uvit-h-in-512px.toml \\
        --samples 1000 --batch-size 16 --inception fid.safetensors
"""


def benchmark(
    compare_ae: Annotated[
        bool, typer.Option("--compare-ae", help="High-compression AE vs baseline: DiT speed.")
    ] = False,
    image: Annotated[
        bool,
        typer.Option(
            "--image",
            help="--compare-ae on 512 px images: a DC-AE-Diffusion network (--dit uvit-s, "
            "uvit-h, uvit-2b, dit-xl) on SD-VAE-f8 vs DC-AE f32/f64 latents.",
        ),
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
        str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda when available).")
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
    compile_dit: Annotated[
        bool,
        typer.Option(
            "--compile", help="--compare-ae: torch.compile every row's DiT (compile time apart)."
        ),
    ] = False,
    compile_mode: Annotated[
        str | None,
        typer.Option(help="--compare-ae --compile: blocks (each repeated block class) or forward."),
    ] = None,
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
        Path | None,
        typer.Option(
            help="--caching: the model's recipe (default: the demo); --fid: samples from."
        ),
    ] = None,
    fid: Annotated[
        bool, typer.Option("--fid", help="FID of --images (or --recipe samples) vs --reference.")
    ] = False,
    reference: Annotated[
        Path | None,
        typer.Option(help="--fid: reference images folder, or an .npz with mu and sigma."),
    ] = None,
    images: Annotated[Path | None, typer.Option(help="--fid: folder of generated images.")] = None,
    samples: Annotated[
        int | None, typer.Option(min=2, help="--fid: images to sample from --recipe.")
    ] = None,
    inception: Annotated[
        Path | None, typer.Option(help="--fid: FID Inception weights (pt_inception, .safetensors).")
    ] = None,
    save_stats: Annotated[
        Path | None, typer.Option(help="--fid: also write the reference statistics (.npz).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option(help="--caching: also write the JSON result here.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing --csv/--plot/--output/--save-stats files.")
    ] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Measure what vidcli claims: DiT step, generation and AE times per autoencoder."""

    def action() -> Any:
        from vidcli.compile import DEFAULT_MODE
        from vidcli.devices import dtype_name, resolve_device, resolve_dtype

        where = resolve_device(device)
        from vidcli import benchmark as bench

        outputs = {"--csv": csv, "--plot": plot, "--output": output, "--save-stats": save_stats}
        for option, path in outputs.items():
            # Refused before minutes of measuring, not after.
            if path is not None and Path(path).exists() and not overwrite:
                raise UsageError(f"{option} {path} already exists; pass --overwrite to replace it")

        if fid:
            from vidcli.benchmark import fid as fid_bench

            if compare_ae or attention or kernels or caching:
                raise UsageError(
                    "--fid runs alone; drop --compare-ae/--attention/--kernels/--caching"
                )
            return fid_bench.run(
                fid_bench.FIDOptions(
                    reference=reference,
                    images=images,
                    recipe=recipe,
                    samples=samples,
                    inception=inception,
                    save_stats=save_stats,
                    batch_size=batch_size,
                    device=device,
                    dtype=dtype,
                )
            )
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
                    device=device,
                    dtype=dtype,
                )
            )
        if image:
            from vidcli.benchmark import compare_ae_image

            others = attention or kernels or quality or csv or plot
            if not compare_ae or others:
                raise UsageError(
                    "--image is a --compare-ae mode and runs alone; add --compare-ae, drop "
                    "--attention/--kernels/--quality/--csv/--plot"
                )
            return compare_ae_image.run(
                compare_ae_image.ImageCompareOptions(
                    ae=list(ae or []),
                    dit=dit,
                    dit_blocks=dit_blocks,
                    resolution=resolution or 512,
                    batch_size=batch_size if batch_size != 1 else None,
                    repeat=repeat if repeat != 3 else None,
                    device=str(where),
                    dtype=dtype or dtype_name(resolve_dtype(None, where)),
                )
            )
        if compile_mode is not None and not compile_dit:
            raise UsageError(f"--compile-mode {compile_mode} needs --compile")
        if compile_mode not in (None, "blocks", "forward"):
            raise UsageError(f"--compile-mode {compile_mode!r}: expected blocks or forward")
        if compile_dit and not compare_ae:
            raise UsageError("--compile compiles the --compare-ae rows' DiT; add --compare-ae")
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
            device=str(where),
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
            compile=(compile_mode or DEFAULT_MODE) if compile_dit else "off",
        )
        return bench.run(options)

    run_action(action, as_json=json_output, quiet=quiet, debug=debug)
