"""Text -> video: encode prompts, sample latents with rectified flow, decode, write files.

The pipeline reads only the recipe's `[ae]`, `[dit]`, `[text]` and `[sample]` sections; the
autoencoder decides which sizes are valid and how latents are scaled. Each prompt's noise comes
from its own generator seeded with `seed + index`, so a video depends on its prompt and seed,
not on the batch it was sampled in.

`run` reads as the run's phases: placement (device, dtype and offload, with the memory plan on
CUDA, decided once in `_placement`) -> load (`vidcli.sampling.pipeline`) -> per batch of prompts
t2i -> text -> sample -> decode (`vidcli.sampling.phases`) -> write.

`[launcher] nproc` N > 1 (`--nproc`): the run is re-launched on N local ranks
(`vidcli.generate_worker`) that form one sequence-parallel group (`[launcher] sequence_parallel`
= N): every rank encodes the text and any `--image`, and samples its shard of the video tokens;
rank 0 alone decodes with the AE and writes the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidcli import devices
from vidcli.console import DEBUG_ENV, log, progress_bar, to_jsonable
from vidcli.demo import DEMO_DIR, DEMO_RECIPE
from vidcli.errors import ShapeError, StageFailed, UsageError
from vidcli.fileio import refuse_stdout
from vidcli.launch import init_process_group, inside_distributed_job, run_ranks, torchrun_command
from vidcli.placement import Placement
from vidcli.recipe import Recipe, SampleSection, dump_recipe, load_recipe, write_resolved_recipe
from vidcli.sampling.acceleration import attention_config
from vidcli.sampling.cache import cache_for_sample, cache_report
from vidcli.sampling.compatibility import check_run
from vidcli.sampling.phases import first_frames, image_condition, sample_videos
from vidcli.sampling.pipeline import load_pipeline

FORMATS = ("mp4", "gif", "png")


@dataclass
class GenerateOptions:
    """Per-call options of `vidcli generate` that are not recipe values."""

    prompts: list[str]
    out: Path | None = None
    """A file (one prompt) or a folder; default `outputs/`."""
    paths: list[Path] | None = None
    """The output path of each prompt, reserved by `reserved_outputs` (None: not yet); the
    ranks of a multi-process run get the parent's."""
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
    sequence_parallel: int = 1
    """Ranks that split each video's tokens (`[launcher] sequence_parallel`)."""
    image_tokens_per_rank: int | None = None
    """Video tokens each rank of the group holds (None without sequence parallelism)."""
    all_to_all_bytes_per_step: float | None = None
    """Bytes rank 0 sent to the others per denoising step (all-to-alls and gathers), measured."""

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
    attention_config(recipe.sample)  # a bad [sample] sparse_* value fails before any model loads
    on_ranks = recipe.launcher.nproc > 1 and not inside_distributed_job()
    if on_ranks:
        from vidcli.sampling.compatibility import check_sequence_parallel, sample_setting

        check_sequence_parallel(sample_setting(recipe.sample), recipe.launcher.sequence_parallel)
    # Output names are taken (or existing files refused) before any model loads or rank starts.
    with reserved_outputs(options) as options:
        if on_ranks:
            return _run_on_ranks(recipe, options)
        return _sample_and_write(recipe, options)


def _sample_and_write(recipe: Recipe, options: GenerateOptions) -> GenerateResult:
    """`run` in this process (one rank of several, or alone), into `options.paths`."""
    sample = recipe.sample
    rank, world = init_process_group() if inside_distributed_job() else (0, 1)
    started = time.perf_counter()
    # Every device, dtype and offload decision of the run, taken once: the phases only ask it.
    placement, plan = _placement(recipe, options)
    check_run(recipe, placement, image=options.image is not None, lora=bool(options.loras))
    pipe = load_pipeline(recipe, placement, ema=not options.raw_weights)
    sp = _sequence_parallel(pipe.dit, recipe.launcher.sequence_parallel, world)
    if plan is not None and plan.tiling is not None:
        from vidcli.models.dcae import TilingConfig

        pipe.ae.tiling = TilingConfig(**plan.tiling)
    if sample.compile_ae:
        # Placed and loaded: freezing folds the weights as they are now. The encoder (an i2v
        # image, once a run) stays eager: its compile would not pay back.
        from vidcli.models.dcae.compiled import compile_autoencoder

        compile_autoencoder(pipe.ae, coders=("decoder",))
    if options.loras:
        from vidcli.models.adapters import apply_lora_options

        for path, scale in apply_lora_options(pipe.dit, options.loras):
            log.info("merged LoRA %s (scale %g) into the DiT", path, scale)
    size = _valid_size(pipe.ae, sample.frames, sample.height, sample.width, options.snap)
    paths = [Path(p) for p in options.paths or ()]  # JSON strings on the ranks
    reference = image_condition(pipe, options.image, size) if options.image else None
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
    with progress_bar() as bar:
        steps = sample.steps + (pipe.t2i.steps if pipe.t2i is not None else 0)
        task = bar.add_task("generate", total=len(options.prompts) * steps, status="")

        def on_step(step: int, x: torch.Tensor) -> None:
            bar.advance(task)

        for first in range(0, len(options.prompts), options.batch_size):
            batch = options.prompts[first : first + options.batch_size]
            seeds = [sample.seed + first + i for i in range(len(batch))]
            if pipe.t2i is not None:  # t2i2v: frame 0 drawn for the raw prompts
                tick = time.perf_counter()
                reference = first_frames(pipe, sample, batch, seeds, size, on_step)
                timings["t2i"] = timings.get("t2i", 0.0) + time.perf_counter() - tick
            # text -> sample -> decode
            video = sample_videos(
                pipe,
                sample,
                _video_prompts(batch, sample),
                seeds,
                size,
                reference=reference,
                on_step=on_step,
                timings=timings,
                model_fn=cached,
                hooks=cached,
                decode=rank == 0,
            )
            tick = time.perf_counter()
            for i, prompt in enumerate(batch):
                path = paths[first + i]
                if rank == 0:
                    _write(video[i], path, sample.fps, options.output_format)
                    _write_sidecar(path, prompt, seeds[i], recipe, timings)
                videos.append(GeneratedVideo(path, prompt, seeds[i], *size, sample.fps))
            timings["write"] += time.perf_counter() - tick
    ae_graphs, ae_compile_s = 0, 0.0
    if sample.compile_ae:
        # The first decode of each size compiled: reported apart from the decode time.
        from vidcli.models.dcae.compiled import compile_stats

        ae_graphs, ae_compile_s = compile_stats(pipe.ae)
        timings["compile_ae"] = ae_compile_s
        timings["decode"] = max(0.0, timings.get("decode", 0.0) - ae_compile_s)
        log.info("compile_ae (decoder): %d graphs, %.1f s", ae_graphs, ae_compile_s)
    if recipe.sample.compile != "off":
        # The first steps compiled: that time is reported apart from the sampling loop's.
        # Dynamo's counters are process-wide: the AE decoder's compiling is taken out.
        stats = pipe.compile_stats()
        graphs, compile_s = stats.graphs - ae_graphs, stats.compile_s - ae_compile_s
        timings["compile"] = compile_s
        timings["sample"] = max(0.0, timings["sample"] - compile_s)
        log.info("compile (%s): %d graphs, %.1f s", stats.mode, graphs, compile_s)
    timings["total"] = time.perf_counter() - started
    log.info("generate: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    parallel: dict[str, Any] = {}
    if sp is not None:
        _, t_lat, h_lat, w_lat = pipe.ae.latent_shape(*size)
        p = pipe.dit.config.patch_size
        denoising_steps = sample.steps * -(-len(options.prompts) // options.batch_size)
        parallel = {
            "sequence_parallel": sp.size,
            "image_tokens_per_rank": sp.local_len(t_lat * (h_lat // p) * (w_lat // p)),
            "all_to_all_bytes_per_step": sp.sent_bytes / denoising_steps,
        }
    return GenerateResult(
        videos=videos,
        timings_s=timings,
        device=placement.name,
        dtype=devices.dtype_name(placement.dtype),
        peak_memory_gb=devices.peak_memory_gb(placement.device),
        offload=placement.offload,
        **cache_report(sample.cache, cached),
        **parallel,
    )


def _placement(recipe: Recipe, options: GenerateOptions) -> tuple[Placement, Any]:
    """Where the run computes (`--device`, `--dtype`, `--offload`) and, on CUDA, the memory plan
    it obeys (its offload mode and AE tiles; None on the CPU)."""
    where = devices.resolve_device(options.device)
    if where.type == "cuda" and inside_distributed_job():  # one GPU per local rank
        where = devices.resolve_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    dtype = devices.resolve_dtype(options.dtype, where)
    if where.type != "cuda":
        return Placement(where, dtype, park=options.offload), None
    from vidcli.plans import device_memory_gb, plan_generate

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
    return Placement(where, dtype, plan.offload, park=options.offload), plan


def _run_on_ranks(recipe: Recipe, options: GenerateOptions) -> GenerateResult:
    """`run(recipe, options)` on `[launcher] nproc` local ranks (`vidcli.generate_worker`): the
    ranks read the resolved recipe and options from a temporary folder and rank 0 leaves the
    result, or the error, there."""
    workdir = Path(tempfile.mkdtemp(prefix="vidcli-generate-"))
    try:
        recipe_file = write_resolved_recipe(recipe, workdir)
        options_file, result_file = workdir / "options.json", workdir / "result.json"
        options_file.write_text(json.dumps(to_jsonable(options)))
        args = ["--recipe", str(recipe_file), "--options", str(options_file)]
        args += ["--result", str(result_file)]
        nproc = recipe.launcher.nproc
        returncode = run_ranks(torchrun_command("vidcli.generate_worker", args, nproc), nproc)
        payload = json.loads(result_file.read_text()) if result_file.is_file() else None
        if returncode != 0 or payload is None or "error" in payload:
            if payload is not None and "error" in payload:
                error = UsageError if payload["exit_code"] == 2 else StageFailed
                raise error(payload["error"])
            raise StageFailed(
                f"generate failed on one of its {nproc} ranks (exit {returncode}); see the rank "
                "logs above",
                hint=f"run again with --debug (sets {DEBUG_ENV}=1 on every rank)",
            )
        videos = [GeneratedVideo(**{**v, "path": Path(v["path"])}) for v in payload.pop("videos")]
        return GenerateResult(videos=videos, **payload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _sequence_parallel(dit: torch.nn.Module, size: int, world: int):
    """Split the DiT's video tokens across the `size` ranks of this run (one SP group); the
    group's `SequenceParallel`, or None for one rank.

    Refused (exit 2): a size that does not divide the ranks or the heads, and a size other than
    the rank count (generate runs one group; its ranks share every prompt).
    """
    from vidcli import sequence_parallel

    heads = dit.config.num_heads
    sequence_parallel.check_size(size, world, heads)
    if size != world:
        raise UsageError(
            f"generate on {world} ranks runs one sequence-parallel group: set "
            f"launcher.sequence_parallel = {world} (got {size})"
        )
    sp = sequence_parallel.build(size, heads)
    dit.use_sequence_parallel(sp)
    return sp


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


@contextlib.contextmanager
def reserved_outputs(options: GenerateOptions) -> Iterator[GenerateOptions]:
    """`options` with `paths`: one output path per prompt, each this run's alone.

    `--out FILE` (one prompt) is that file: refused if it or its sidecar exists, unless
    `--overwrite`. Otherwise vidcli names the files, `<folder>/<NNN>-<prompt slug>.<ext>` in
    `--out FOLDER` or `outputs/`, and a name that is taken (the file or its sidecar exists)
    becomes the first free `...-1.<ext>`, `...-2.<ext>`, ... (with `--overwrite` the first
    name is replaced instead). A name is taken by creating it empty with O_CREAT | O_EXCL, so
    two runs at once never get the same one; the finished video replaces that placeholder
    (`_write` renames over it). If the run fails, placeholders not yet written are removed.
    """
    if options.paths is not None:  # a rank: the parent reserved them
        yield options
        return
    made = _Placeholders()
    try:
        paths = _output_paths(options, made)
        yield dataclasses.replace(options, paths=paths)
    except BaseException:
        made.release()
        raise


@dataclass
class _Placeholders:
    """What `reserved_outputs` created: empty files with their (device, inode), and folders."""

    files: list[tuple[Path, tuple[int, int]]] = field(default_factory=list)
    folders: list[Path] = field(default_factory=list)
    """Deepest first."""

    def create(self, path: Path) -> None:
        """Create `path` empty; FileExistsError if anything is there (O_CREAT | O_EXCL)."""
        missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
        while True:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                break
            except FileNotFoundError:  # a failed run removed the folder it had made: again
                continue
        self.folders += [p for p in missing if p not in self.folders]
        try:
            made = os.fstat(fd)
        finally:
            os.close(fd)
        self.files.append((path, (made.st_dev, made.st_ino)))

    def release(self) -> None:
        """Remove the placeholders no video replaced (same inode, still empty), then the
        folders made for them if nothing else went in."""
        for path, identity in self.files:
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                continue
            if (now.st_dev, now.st_ino) == identity and now.st_size == 0:
                path.unlink(missing_ok=True)
        for folder in self.folders:
            with contextlib.suppress(OSError):  # not empty: keep it
                folder.rmdir()


def _output_paths(options: GenerateOptions, made: _Placeholders) -> list[Path]:
    """The paths `reserved_outputs` describes; each placeholder it creates goes into `made`."""
    suffix = "" if options.output_format == "png" else f".{options.output_format}"
    prompts = options.prompts
    out = options.out
    if (
        out is not None
        and len(prompts) == 1
        and (out.suffix or not out.exists())
        and not (out.is_dir())
    ):
        path = out if out.suffix or suffix == "" else out.with_suffix(suffix)
        for target in (path, sidecar_path(path)):
            refuse_stdout(target)  # even with --overwrite: stdout would be lost
            if target.exists() and not options.overwrite:
                raise UsageError(f"{target} already exists; pass --overwrite to replace it")
        if not options.overwrite:
            try:
                made.create(path)
            except FileExistsError:  # made since the check, by another run
                raise UsageError(f"{path} already exists; pass --overwrite to replace it") from None
        return [path]
    folder = out or Path("outputs")
    stems = [folder / f"{i:03d}-{_slug(p)}" for i, p in enumerate(prompts)]
    if options.overwrite:
        paths = [stem.with_name(stem.name + suffix) for stem in stems]
        for path in paths:
            refuse_stdout(path)
            refuse_stdout(sidecar_path(path))
        return paths
    return [_first_free(stem, suffix, made) for stem in stems]


def _first_free(stem: Path, suffix: str, made: _Placeholders) -> Path:
    """`<stem><suffix>`, else the first free `<stem>-N<suffix>` (N = 1, 2, ...), created empty."""
    n = 0
    while True:
        path = stem.with_name(f"{stem.name}{f'-{n}' if n else ''}{suffix}")
        n += 1
        if os.path.lexists(sidecar_path(path)):  # a sidecar without its video still names it
            continue
        try:
            made.create(path)
        except FileExistsError:
            continue
        return path


def sidecar_path(path: Path) -> Path:
    """The JSON written beside a video (`clip.mp4` -> `clip.mp4.json`)."""
    return path.with_name(path.name + ".json")


def _slug(prompt: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60] or "video"


def _video_prompts(prompts: list[str], sample: SampleSection) -> list[str]:
    """The prompts the video model sees: with Open-Sora v2's FPS / motion suffix if asked."""
    if not sample.prompt_suffix:
        return prompts
    from vidcli.sampling.t2i2v import prompt_with_suffix

    return [prompt_with_suffix(p, sample.fps, sample.motion_score) for p in prompts]


def _write(video: torch.Tensor, path: Path, fps: int, output_format: str) -> None:
    from vidcli.media import write_video

    # `path` is this run's (reserved_outputs): an empty placeholder, or replaced on --overwrite.
    if output_format == "png" and video.shape[1] == 1:  # one frame: an image, not a folder
        from vidcli.media import write_image

        write_image(path, video[:, 0], overwrite=True)
        return
    write_video(path, video, fps=fps, format=output_format, overwrite=True)


def _write_sidecar(
    path: Path, prompt: str, seed: int, recipe: Recipe, timings: dict[str, float]
) -> None:
    from vidcli.fileio import atomic_write_text

    sidecar = sidecar_path(path)
    payload = {
        "prompt": prompt,
        "seed": seed,
        "recipe": dump_recipe(recipe),
        "timings_s": dict(timings),
    }
    atomic_write_text(sidecar, json.dumps(payload, indent=2) + "\n")


__all__ = ["GenerateOptions", "GenerateResult", "collect_prompts", "load_generate_recipe", "run"]
