"""Text -> video: encode prompts, sample latents with rectified flow, decode, write files.

The pipeline reads only the recipe's `[ae]`, `[dit]`, `[text]` and `[sample]` sections; the
autoencoder decides which sizes are valid and how latents are scaled. Each prompt's noise comes
from its own generator seeded with `seed + index`, so a video depends on its prompt and seed,
not on the batch it was sampled in.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidcli import devices, flow
from vidcli.console import log, progress_bar
from vidcli.demo import DEMO_DIR, DEMO_RECIPE
from vidcli.errors import ShapeError, UsageError
from vidcli.offload import decode_with_retry
from vidcli.recipe import Recipe, SampleSection, dump_recipe, load_recipe
from vidcli.sampling.acceleration import attention_config, sampling_acceleration
from vidcli.sampling.cache import cache_for_sample, cache_report

FORMATS = ("mp4", "gif", "png")


@dataclass
class GenerateOptions:
    """Per-call options of `vidcli generate` that are not recipe values."""

    prompts: list[str]
    out: Path | None = None
    """A file (one prompt) or a folder; default `outputs/`."""
    output_format: str = "mp4"
    image: Path | None = None
    """First-frame image for image-to-video."""
    batch_size: int = 1
    overwrite: bool = False
    snap: bool = False
    """Round frames/height/width to the nearest the autoencoder accepts."""
    offload: bool = False
    """Move the text encoder and AE to the CPU while the DiT samples."""
    device: str | None = None
    """`--device`: auto (CUDA when available), cpu, cuda or cuda:N."""
    dtype: str | None = None
    """`--dtype`: bf16, fp16 or fp32; default bf16 on CUDA, fp32 on CPU."""
    raw_weights: bool = False
    """Sample a train-dit checkpoint's raw weights rather than its EMA (`ema.safetensors`)."""
    loras: list[str] = field(default_factory=list)
    """LoRA files `PATH[:scale]` merged into the DiT in order (diffusers or ComfyUI layout)."""


@dataclass
class GeneratedVideo:
    path: Path
    prompt: str
    seed: int
    frames: int
    height: int
    width: int
    fps: int


@dataclass
class GenerateResult:
    videos: list[GeneratedVideo]
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "fp32"
    peak_memory_gb: float | None = None
    """Peak allocated CUDA memory of the run, measured (None on the CPU)."""
    offload: str = "none"
    """What the memory plan moved off the device (`vidcli generate --plan`; CUDA only)."""
    cache: str = "none"
    """`[sample] cache` method (README "Faster sampling")."""
    cache_value: float | None = None
    """Its threshold or interval."""
    full_evals: int | None = None
    """DiT evaluations computed in full (None without caching)."""
    partial_evals: int | None = None
    """Evaluations that computed only some blocks, modules or tokens."""
    skipped_evals: int | None = None
    """Evaluations answered from the cache without running the blocks."""

    def stdout_lines(self) -> list[str]:
        return [str(v.path) for v in self.videos]


def load_generate_recipe(
    recipe_path: Path | None, checkpoint: Path | None, overrides: list[str]
) -> Recipe:
    """The recipe to sample with: `--recipe`, else a checkpoint's own, else the bundled demo."""
    if recipe_path is None and checkpoint is not None:
        recipe_path = checkpoint / "recipe.toml"
        if not recipe_path.is_file():
            raise UsageError(
                f"--checkpoint {checkpoint}: no recipe.toml (not a train-dit checkpoint)"
            )
    if checkpoint is not None:
        overrides = [f"dit.path={json.dumps(str(checkpoint))}", *overrides]
    if recipe_path is None:
        return _demo_recipe(overrides)
    return load_recipe(recipe_path, overrides)


def _demo_recipe(overrides: list[str]) -> Recipe:
    """The bundled demo recipe, with its weight paths made absolute."""
    if not DEMO_RECIPE.is_file():
        raise UsageError(f"the bundled demo model is missing ({DEMO_RECIPE}); reinstall vidcli")
    recipe = load_recipe(DEMO_RECIPE, overrides)
    for section in (recipe.ae, recipe.dit):
        if section.path and not Path(section.path).is_absolute():
            section.path = str(DEMO_DIR / section.path)
    return recipe


def collect_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    """Prompts from the command line, then from `--prompts-file` (one per line)."""
    collected = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise UsageError(f"--prompts-file {prompts_file}: file not found")
        lines = prompts_file.read_text().splitlines()
        collected += [line.strip() for line in lines if line.strip()]
    if not collected:
        raise UsageError(
            "generate needs a prompt", hint='vidcli generate "a red circle moving right"'
        )
    return collected


@dataclass
class Pipeline:
    """The three models of a generation run, loaded once."""

    ae: Any
    text: Any
    dit: Any
    device: str
    dtype: torch.dtype = torch.float32
    """Compute dtype: the DiT's weights, and autocast's dtype while sampling and decoding."""
    offload: str = "none"
    """The memory plan's offload: none, model (one model on the device at a time) or blocks."""
    t2i: Any = None
    """The t2i2v image stage (`vidcli.sampling.t2i2v.ImageStage`) when `[t2i] enabled`."""


def load_pipeline(
    recipe: Recipe,
    ema: bool = True,
    device: str | None = None,
    dtype: str | None = None,
    offload: str = "none",
) -> Pipeline:
    """Build the `[ae]`, `[text]` and `[dit]` models of a recipe on the best device.

    When `[dit] path` is a train-dit checkpoint holding EMA weights, `ema` samples those.
    """
    from vidcli.builders import (
        autoencoder_from_section,
        dit_from_section,
        text_encoder_from_section,
    )
    from vidcli.data.provenance import check_checkpoint

    where = devices.resolve_device(device)
    compute = devices.resolve_dtype(dtype, where)
    device = str(where)
    ae = autoencoder_from_section(recipe.ae).eval()
    if recipe.dit.path:  # a DiT trained on another AE's latents would sample noise
        check_checkpoint(recipe.dit.path, recipe.ae, ae)
    # Offloaded models wait on the CPU until their phase (`sample_videos` moves them).
    text_device = "cpu" if offload != "none" else device
    text = text_encoder_from_section(recipe.text, device=text_device, dtype=compute)
    dit = dit_from_section(recipe.dit, ae.latent_channels, text).to(dtype=compute).eval()
    if offload == "blocks":
        from vidcli.offload import stream_blocks

        stream_blocks(dit, where)
    elif offload == "none":
        dit.to(where)
    if ema and recipe.dit.path:
        load_ema_weights(dit, Path(recipe.dit.path))
    t2i = None
    if recipe.t2i.enabled:
        t2i = _image_stage(recipe, text, device if offload == "none" else "cpu")
        t2i.dit.to(dtype=compute)  # the plan counts the image DiT in the compute dtype too
        if offload == "blocks":
            from vidcli.offload import stream_blocks

            stream_blocks(t2i.dit, where)
    return Pipeline(
        ae=ae, text=text, dit=dit, device=device, dtype=compute, offload=offload, t2i=t2i
    )


def _image_stage(recipe: Recipe, text, device: str):
    """The `[t2i]` models of t2i2v (distilled image DiT + its AE), built like `[dit]`/`[ae]`."""
    from vidcli.builders import autoencoder_from_section, dit_from_section
    from vidcli.recipe import AESection, DiTSection
    from vidcli.sampling.t2i2v import ImageStage

    t2i = recipe.t2i
    # One image: the reference runs Flux's AE untiled.
    ae_section = AESection(
        preset=t2i.ae_preset, path=t2i.ae_path, overrides=t2i.ae_overrides, tiling=False
    )
    ae = autoencoder_from_section(ae_section).eval()
    dit_section = DiTSection(preset=t2i.preset, path=t2i.path, overrides=t2i.overrides)
    dit = dit_from_section(dit_section, ae.latent_channels, text).to(device).eval()
    if not dit.config.guidance_embed:
        raise UsageError(
            f"[t2i] preset {t2i.preset!r}: the image stage needs a guidance-distilled DiT "
            "(guidance_embed = true, e.g. flux-dev)"
        )
    steps = t2i.steps or recipe.sample.steps
    return ImageStage(dit=dit, ae=ae, resolution=t2i.resolution, guidance=t2i.guidance, steps=steps)


EMA_FILE = "ema.safetensors"
"""The EMA weights a train-dit checkpoint folder holds beside model.safetensors."""


def load_ema_weights(dit: torch.nn.Module, checkpoint: Path) -> bool:
    """Load `checkpoint/ema.safetensors` into `dit` (strict) if there is one; True if loaded."""
    from safetensors.torch import load_file

    ema_file = checkpoint / EMA_FILE
    if not ema_file.is_file():
        return False
    device = next(dit.parameters()).device
    from vidcli.models.adapters import plain_state  # a LoRA run's EMA: adapters merged

    state = plain_state(ema_file, load_file(str(ema_file), device=str(device)))
    dit.load_state_dict(state, strict=True)
    log.info("sampling the EMA weights of %s (--raw-weights for the raw ones)", checkpoint)
    return True


@torch.no_grad()
def sample_videos(
    pipe: Pipeline,
    sample: SampleSection,
    prompts: list[str],
    seeds: list[int],
    size: tuple[int, int, int],
    reference: torch.Tensor | None = None,
    offload: bool = False,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    timings: dict[str, float] | None = None,
    model_fn: flow.ModelFn | None = None,
    hooks: flow.SamplingHooks | None = None,
) -> torch.Tensor:
    """Videos `(N, 3, T, H, W)` in [-1, 1] for prompts with their seeds; size = (T, H, W).

    reference: (C, 1, H', W') first-frame latent for image-to-video (or one per prompt), or None.
    A guidance-distilled DiT (Flux-dev, `guidance_embed`) samples without CFG rows, with
    `sample.guidance` as its distilled scale. model_fn: stands in for `dit.forward_video` (a
    caching runner, `vidcli.sampling.cache.CachedDiT`); hooks: the loop's per-evaluation hooks.
    """
    timings = timings if timings is not None else {}
    frames, height, width = size
    ae, text, dit, device = pipe.ae, pipe.text, pipe.dit, pipe.device
    latent_shape = ae.latent_shape(frames, height, width)
    p = dit.config.patch_size
    _, t_lat, h_lat, w_lat = latent_shape
    if h_lat % p or w_lat % p:
        raise ShapeError(f"latent {h_lat}x{w_lat} is not divisible by the DiT patch size {p}")

    tick = time.perf_counter()
    text.to(device)
    emb = text.encode(prompts)
    neg = text.encode([sample.negative_prompt])
    if offload:
        text.to("cpu")
    timings["text"] = timings.get("text", 0.0) + time.perf_counter() - tick
    if pipe.offload == "model":
        dit.to(device)

    tick = time.perf_counter()
    # Each prompt's noise has its own generator: a video depends on its seed, not its batch.
    noise = torch.stack(
        [torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    ).to(device)
    condition = None
    if reference is not None:
        refs = reference if isinstance(reference, list) else [reference] * len(prompts)
        condition = flow.build_condition("i2v_head", noise.shape, refs, causal=False, device=device)
    # α from the latent size at the DiT's patch (spec §9), unless the recipe fixes flow_shift.
    alpha = sample.flow_shift
    if alpha is None:
        alpha = flow.inference_shift_alpha(h_lat, w_lat, t_lat, p)
    schedule = flow.inference_schedule(
        sample.steps, h_lat * w_lat // (p * p), t_lat, shift=sample.shift, flow_shift=alpha
    )
    guidance = flow.GuidanceConfig(
        text=sample.guidance,
        image=sample.guidance_img,
        text_osci=sample.text_osci,
        image_osci=sample.image_osci,
        scale_temporal_osci=sample.scale_temporal_osci,
    )
    if dit.config.guidance_embed:  # distilled (Flux-dev): the scale enters the model, no CFG
        latents = flow.sample_distilled(
            model_fn or dit.forward_video,
            noise,
            schedule,
            emb.tokens.to(device),
            emb.pooled.to(device),
            guidance=sample.guidance,
            callback=on_step,
        )
    else:
        grid = (t_lat, h_lat // p, w_lat // p)
        with sampling_acceleration(sample, grid, hooks) as accel:
            latents = flow.sample_i2v(
                model_fn or dit.forward_video,
                noise,
                schedule,
                emb.tokens.to(device),
                emb.pooled.to(device),
                neg.tokens.to(device),
                neg.pooled.to(device),
                condition=condition,
                guidance=guidance,
                replace_all_items=True,
                callback=on_step,
                solver=accel.solver,
                leap=accel.leap,
                hooks=accel.hooks,
            )
        if accel.plan is not None:
            log.info("attention paths: %s", accel.plan.choices)
    timings["sample"] = timings.get("sample", 0.0) + time.perf_counter() - tick

    tick = time.perf_counter()
    if pipe.offload == "model":
        dit.to("cpu")
    ae.to(device)
    video = decode_with_retry(ae, latents).float().cpu()[:, :, :frames]
    if offload:
        ae.to("cpu")
    timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - tick
    return video.clamp(-1, 1)


def run(recipe: Recipe, options: GenerateOptions) -> GenerateResult:
    """Generate one video per prompt; returns the written paths and stage timings."""
    if options.output_format not in FORMATS:
        raise UsageError(f"--format {options.output_format}: choose one of {', '.join(FORMATS)}")
    if options.out is not None and options.out.suffix[1:] in FORMATS and len(options.prompts) == 1:
        # The file name decides: `--out still.png` writes a PNG, `--out clip.gif` a GIF.
        options = dataclasses.replace(options, output_format=options.out.suffix[1:])
    if options.image is not None and recipe.t2i.enabled:
        raise UsageError(
            "--image and [t2i] enabled both choose frame 0; drop --image or --set t2i.enabled=false"
        )
    sample = recipe.sample
    attention_config(sample)  # a bad [sample] sparse_* value fails before any model loads
    started = time.perf_counter()
    plan = _memory_plan(recipe, options)
    pipe = load_pipeline(
        recipe,
        ema=not options.raw_weights,
        device=options.device,
        dtype=options.dtype,
        offload=plan.offload if plan is not None else "none",
    )
    if plan is not None and plan.tiling is not None:
        from vidcli.models.dcae import TilingConfig

        pipe.ae.tiling = TilingConfig(**plan.tiling)
    offload = options.offload or pipe.offload != "none"
    if options.loras:
        from vidcli.models.adapters import apply_lora_options

        for path, scale in apply_lora_options(pipe.dit, options.loras):
            log.info("merged LoRA %s (scale %g) into the DiT", path, scale)
    size = _valid_size(pipe.ae, sample.frames, sample.height, sample.width, options.snap)
    paths = _output_paths(options)
    reference = _image_latent(pipe.ae, options.image, *size) if options.image else None
    if offload:
        pipe.ae.to("cpu")
    timings: dict[str, float] = {"load": time.perf_counter() - started, "write": 0.0}
    cached = cache_for_sample(
        sample.cache,
        sample.cache_calibration,
        recipe.dit.path,
        pipe.dit,
        sample.steps,
        pipe.ae.latent_shape(*size)[1],
    )

    videos: list[GeneratedVideo] = []
    with progress_bar() as bar, devices.autocast(pipe.device, pipe.dtype):
        steps = sample.steps + (pipe.t2i.steps if pipe.t2i is not None else 0)
        task = bar.add_task("generate", total=len(options.prompts) * steps, status="")
        for first in range(0, len(options.prompts), options.batch_size):
            batch = options.prompts[first : first + options.batch_size]
            seeds = [sample.seed + first + i for i in range(len(batch))]
            if pipe.t2i is not None:
                reference = _first_frames(pipe, sample, batch, seeds, size, timings, bar, task)
            video = sample_videos(
                pipe,
                sample,
                _video_prompts(batch, sample),
                seeds,
                size,
                reference=reference,
                offload=offload,
                on_step=lambda step, x: bar.advance(task),
                timings=timings,
                model_fn=cached,
                hooks=cached,
            )
            tick = time.perf_counter()
            for i, prompt in enumerate(batch):
                path = paths[first + i]
                _write(video[i], path, sample.fps, options.output_format)
                _write_sidecar(path, prompt, seeds[i], recipe, timings)
                videos.append(GeneratedVideo(path, prompt, seeds[i], *size, sample.fps))
            timings["write"] += time.perf_counter() - tick
    timings["total"] = time.perf_counter() - started
    log.info("generate: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return GenerateResult(
        videos=videos,
        timings_s=timings,
        device=pipe.device,
        dtype=devices.dtype_name(pipe.dtype),
        peak_memory_gb=devices.peak_memory_gb(torch.device(pipe.device)),
        offload=pipe.offload,
        **cache_report(sample.cache, cached),
    )


def _memory_plan(recipe: Recipe, options: GenerateOptions):
    """On CUDA, the memory plan this run obeys (offload, AE tiles); None on the CPU."""
    where = devices.resolve_device(options.device)
    if where.type != "cuda":
        return None
    from vidcli.errors import StageFailed
    from vidcli.plans import device_memory_gb, plan_generate

    dtype = devices.resolve_dtype(options.dtype, where)
    plan = plan_generate(
        recipe,
        where,
        dtype,
        device_memory_gb(where, None),
        options.batch_size,
        options.image is not None,
    )
    log.info("memory plan: %s", "; ".join(plan.stdout_lines()[-2:]))
    if not plan.fits:
        raise StageFailed(plan.notes[0], hint="vidcli generate --plan shows the whole plan")
    devices.reset_peak_memory(where)
    return plan


def _valid_size(ae, frames: int, height: int, width: int, snap: bool) -> tuple[int, int, int]:
    """(frames, height, width) the AE accepts; with `snap`, the nearest valid values."""
    if snap:
        sc = ae.spatial_compression
        height = max(sc, round(height / sc) * sc)
        width = max(sc, round(width / sc) * sc)
        frames = min(
            (f for f in range(1, 4 * frames + 8) if _frames_ok(ae, f, height, width)),
            key=lambda f: (abs(f - frames), f),
        )
    try:
        ae.check_input_shape(frames, height, width)
    except ShapeError as err:
        raise ShapeError(f"{err}; or pass --snap to round to the nearest valid size") from None
    return frames, height, width


def _frames_ok(ae, frames: int, height: int, width: int) -> bool:
    try:
        ae.check_input_shape(frames, height, width)
    except ShapeError:
        return False
    # Frames that decode to fewer frames (2 and 4 collapse to one latent frame) do not round-trip.
    _, t_lat, _, _ = ae.latent_shape(frames, height, width)
    return ae.decoded_frames(t_lat) >= frames


def _output_paths(options: GenerateOptions) -> list[Path]:
    """One path per prompt; refuses existing files unless --overwrite (checked before sampling)."""
    suffix = "" if options.output_format == "png" else f".{options.output_format}"
    prompts = options.prompts
    out = options.out
    if (
        out is not None
        and len(prompts) == 1
        and (out.suffix or not out.exists())
        and not (out.is_dir())
    ):
        paths = [out if out.suffix or suffix == "" else out.with_suffix(suffix)]
    else:
        folder = out or Path("outputs")
        paths = [folder / f"{i:03d}-{_slug(p)}{suffix}" for i, p in enumerate(prompts)]
    for path in paths:
        if path.exists() and not options.overwrite:
            raise UsageError(f"{path} already exists; pass --overwrite to replace it")
    return paths


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "video"


def _video_prompts(prompts: list[str], sample: SampleSection) -> list[str]:
    """The prompts the video model sees: with Open-Sora v2's FPS / motion suffix if asked."""
    if not sample.prompt_suffix:
        return prompts
    from vidcli.sampling.t2i2v import prompt_with_suffix

    return [prompt_with_suffix(p, sample.fps, sample.motion_score) for p in prompts]


def _first_frames(pipe: Pipeline, sample, prompts, seeds, size, timings, bar, task):
    """t2i2v: frame 0 of each video drawn by the `[t2i]` model for the raw prompt, returned as
    the video AE's i2v condition latents [(C, 1, H', W')]."""
    from vidcli.sampling.t2i2v import first_frame_conditions

    tick = time.perf_counter()
    emb = pipe.text.to(pipe.device).encode(prompts)
    if pipe.offload != "none":  # the plan's t2i phase: only the image models on the device
        pipe.text.to("cpu")
        pipe.t2i.ae.to(pipe.device)
        if pipe.offload == "model":
            pipe.t2i.dit.to(pipe.device)
    _, refs = first_frame_conditions(
        pipe.t2i,
        pipe.ae.to(pipe.device),
        emb.tokens.to(pipe.device),
        emb.pooled.to(pipe.device),
        seeds,
        size,
        shift=sample.shift,
        callback=lambda step, x: bar.advance(task),
    )
    if pipe.offload != "none":
        pipe.t2i.ae.to("cpu")
        pipe.ae.to("cpu")
        if pipe.offload == "model":
            pipe.t2i.dit.to("cpu")
    timings["t2i"] = timings.get("t2i", 0.0) + time.perf_counter() - tick
    return refs


def _image_latent(ae, image: Path, frames: int, height: int, width: int) -> torch.Tensor:
    """The i2v condition of `--image`: latent frame 0 of the image held still for the video's
    frames (`vidcli.sampling.t2i2v.condition_latent`, the definition training uses): (C, 1, H', W').
    """
    from vidcli.media import read_frames
    from vidcli.sampling.t2i2v import condition_latent

    if not image.is_file():
        raise UsageError(f"--image {image}: file not found")
    frame = read_frames(image, num_frames=1, size=(height, width))
    x = torch.from_numpy(frame).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
    return condition_latent(ae, x[:, 0], frames)


def _write(video: torch.Tensor, path: Path, fps: int, output_format: str) -> None:
    from vidcli.media import write_video

    # Existing files were refused before sampling; a file appearing since is ours to replace.
    if output_format == "png" and video.shape[1] == 1:  # one frame: an image, not a folder
        from vidcli.media import write_image

        write_image(path, video[:, 0], overwrite=True)
        return
    write_video(path, video, fps=fps, format=output_format, overwrite=True)


def _write_sidecar(
    path: Path, prompt: str, seed: int, recipe: Recipe, timings: dict[str, float]
) -> None:
    from vidcli.fileio import atomic_write_text

    sidecar = path.with_name(path.name + ".json")
    payload = {
        "prompt": prompt,
        "seed": seed,
        "recipe": dump_recipe(recipe),
        "timings_s": dict(timings),
    }
    atomic_write_text(sidecar, json.dumps(payload, indent=2) + "\n")


__all__ = ["GenerateOptions", "GenerateResult", "collect_prompts", "load_generate_recipe", "run"]
