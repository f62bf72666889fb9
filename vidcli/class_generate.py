"""ImageNet classes -> PNG images: `vidcli generate` on a class-conditional DC-AE-Diffusion model.

`vidcli generate` takes this path when the recipe's `[dit] preset` is a released model name
(`vidcli.models.dcae_diffusion.RELEASED`, e.g. recipes/dc-ae-uvit-h-in-512px.toml); `[dit] path`
is its downloaded folder. Positional arguments, `--prompts-file` lines and `--class` values are
ImageNet class names or ids; `[sample] guidance` (`--guidance` / `--cfg`), `steps` and `seed` drive
the model's released sampler. Output: one PNG per sample, a JSON sidecar beside each, and a grid.
`--compile-ae` (`[sample] compile_ae`) compiles the image DC-AE's decoder after loading
(`vidcli.models.dcae.compiled`; the model never leaves the device); each batch size compiles on
its first decode, reported apart as `timings_s.compile_ae`.

Seeds: batch k (samples first..first+B-1) draws its noise from one generator seeded
`seed + first` (`generate_images`), so with the default batch size 1 sample i has seed `seed + i`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidcli import devices
from vidcli.console import log, progress_bar
from vidcli.errors import ShapeError, StageFailed, UsageError
from vidcli.fileio import atomic_write_text, refuse_stdout
from vidcli.models.dcae_diffusion import RELEASED, class_id, class_name, released_model
from vidcli.plans.class_conditional import ClassConditionalPlan, class_conditional_plan
from vidcli.recipe import Recipe, SampleSection, dump_recipe

GRID_NAME = "grid.png"


@dataclass
class ClassGenerateOptions:
    """Per-call options of a class-conditional `vidcli generate`."""

    classes: list[str]
    """ImageNet class names or ids, one sample each."""
    out: Path | None = None
    """Output folder; default `outputs/`."""
    batch_size: int = 1
    overwrite: bool = False
    device: str | None = None
    dtype: str | None = None
    unsupported: list[str] = field(default_factory=list)
    """Command-line flags that were set but apply to the video path only (refused)."""


@dataclass
class GeneratedImage:
    path: Path
    label: int
    class_name: str
    seed: int
    """Seed of the generator the sample's batch was drawn from."""


@dataclass
class ClassGenerateResult:
    images: list[GeneratedImage]
    grid: Path
    model: str
    sampler: str
    steps: int
    cfg_scale: float
    timings_s: dict[str, float]
    device: str
    dtype: str
    peak_memory_gb: float | None = None
    """Peak allocated CUDA memory, measured (None on the CPU)."""

    def stdout_lines(self) -> list[str]:
        return [str(image.path) for image in self.images] + [str(self.grid)]


def is_class_conditional(recipe: Recipe) -> bool:
    """True when `[dit] preset` names a released DC-AE-Diffusion model."""
    return recipe.dit.preset.removeprefix("mit-han-lab/") in RELEASED


def resolve_labels(classes: list[str]) -> list[int]:
    """Label ids of class names or ids; UsageError naming the closest classes for a typo."""
    if not classes:
        raise UsageError(
            "a class-conditional model needs ImageNet classes",
            hint='vidcli generate "golden retriever" --class 279 --recipe RECIPE',
        )
    return [class_id(c) for c in classes]


def check(recipe: Recipe, options: ClassGenerateOptions) -> list[int]:
    """Every option of the run checked before anything loads; returns the labels."""
    from vidcli.sampling.compatibility import check_class_conditional, sample_setting

    spec = released_model(recipe.dit.preset)
    if options.unsupported:
        raise UsageError(
            f"{', '.join(options.unsupported)}: not used by class-conditional models "
            f"({recipe.dit.preset}); drop it"
        )
    if recipe.t2i.enabled:
        raise UsageError("[t2i] enabled: class-conditional models draw no first frame; drop it")
    check_class_conditional(sample_setting(recipe.sample), spec.sampler)
    sample, model = recipe.sample, build_meta(recipe)
    side = spec.network.input_size * model.autoencoder.spatial_compression
    if (sample.frames, sample.height, sample.width) != (1, side, side):
        raise ShapeError(
            f"[sample] frames {sample.frames}, height {sample.height}, width {sample.width}: "
            f"{recipe.dit.preset} makes one {side}x{side} image per sample (frames 1)"
        )
    if options.out is not None and options.out.suffix:
        raise UsageError(f"--out {options.out}: give a folder (one PNG per sample + {GRID_NAME})")
    return resolve_labels(options.classes)


def build_meta(recipe: Recipe):
    from vidcli.models.dcae_diffusion import build_released

    return build_released(recipe.dit.preset, device="meta")


def plan(
    recipe: Recipe, options: ClassGenerateOptions, gpu_memory_gb: float | None
) -> ClassConditionalPlan:
    """`vidcli generate --plan`: labels and memory, without reading the weights."""
    labels = check(recipe, options)
    return class_conditional_plan(
        recipe.dit.preset,
        labels,
        options.device,
        options.dtype,
        gpu_memory_gb,
        options.batch_size,
        recipe.sample.guidance,
        recipe.sample.steps,
    )


def load_model(recipe: Recipe, device: torch.device, dtype: torch.dtype):
    """The released model of `[dit]` (preset + path) on `device` in `dtype`, eval mode."""
    from vidcli.models.dcae_diffusion import load_released

    name = recipe.dit.preset.removeprefix("mit-han-lab/")
    if not recipe.dit.path:
        raise UsageError(
            f"[dit] path is empty: {name} needs its weights", hint=_download_hint(name)
        )
    if not Path(recipe.dit.path).exists():
        raise UsageError(f"[dit] path {recipe.dit.path}: not found", hint=_download_hint(name))
    return load_released(recipe.dit.path, name).to(device, dtype)


def sample_batches(
    model, labels: list[int], sample: SampleSection, batch_size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(index of the batch's first sample, its seed, uint8 images (B, H, W, 3)) per batch of
    `labels`; batch k is drawn with seed `sample.seed + first`, guidance and steps of `sample`."""
    from vidcli.sampling.class_conditional import generate_images

    for first in range(0, len(labels), batch_size):
        batch = torch.tensor(labels[first : first + batch_size])
        seed = sample.seed + first
        images = generate_images(
            model, batch, seed=seed, cfg_scale=sample.guidance, steps=sample.steps
        )
        yield first, seed, to_uint8(images)


def run(recipe: Recipe, options: ClassGenerateOptions) -> ClassGenerateResult:
    """One image per class, in batches; writes the PNGs, their sidecars and the grid."""
    labels = check(recipe, options)
    name, sample = recipe.dit.preset.removeprefix("mit-han-lab/"), recipe.sample
    if not recipe.dit.path:  # before any planning: say how to get the weights
        raise UsageError(
            f"[dit] path is empty: {name} needs its weights", hint=_download_hint(name)
        )
    paths, grid = _output_paths(labels, options)
    where = devices.resolve_device(options.device)
    dtype = devices.resolve_dtype(options.dtype, where)
    if where.type == "cuda":
        from vidcli.plans import device_memory_gb

        memory = device_memory_gb(where, None)
        planned = plan(recipe, options, memory)
        if not planned.fits:
            raise StageFailed(planned.notes[0], hint="vidcli generate --plan shows the whole plan")
        devices.reset_peak_memory(where)
    started = time.perf_counter()
    model = load_model(recipe, where, dtype)
    if sample.compile_ae:
        # Loaded and placed, and never moved (the model stays on `where`): freezing folds the
        # image DC-AE's weights as they are now. The sampler never encodes: decoder only.
        from vidcli.models.dcae.compiled import compile_autoencoder

        compile_autoencoder(model.autoencoder, coders=("decoder",))
    spec = model.spec
    timings = {"load": time.perf_counter() - started, "write": 0.0}
    images: list[GeneratedImage] = []
    pixels: list[np.ndarray] = []
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(labels), status="")
        calls = [0]

        def count_call(*_) -> None:
            calls[0] += 1
            bar.update(task, status=f"{calls[0]} network calls")

        hook = model.diffusion_model.register_forward_hook(count_call)
        try:
            for first, seed, arrays in sample_batches(model, labels, sample, options.batch_size):
                tick = time.perf_counter()
                for i, array in enumerate(arrays):
                    path, label = paths[first + i], labels[first + i]
                    _write_png(path, array)
                    _write_sidecar(path, recipe, label, seed, sample.guidance, spec.sampler)
                    images.append(GeneratedImage(path, label, class_name(label), seed))
                    pixels.append(array)
                timings["write"] += time.perf_counter() - tick
                bar.advance(task, len(arrays))
        finally:
            hook.remove()
    _write_png(grid, image_grid(pixels))
    timings["total"] = time.perf_counter() - started
    timings["generate"] = timings["total"] - timings["load"] - timings["write"]
    if sample.compile_ae:
        # The first decode of each batch size compiled: reported apart from the sampling time.
        from vidcli.models.dcae.compiled import compile_stats

        graphs, timings["compile_ae"] = compile_stats(model.autoencoder)
        timings["generate"] = max(0.0, timings["generate"] - timings["compile_ae"])
        log.info("compile_ae (decoder): %d graphs, %.1f s", graphs, timings["compile_ae"])
    log.info("generate: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))
    return ClassGenerateResult(
        images=images,
        grid=grid,
        model=name,
        sampler=spec.sampler,
        steps=sample.steps,
        cfg_scale=sample.guidance,
        timings_s=timings,
        device=str(where),
        dtype=devices.dtype_name(dtype),
        peak_memory_gb=devices.peak_memory_gb(where),
    )


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 as upstream saves them:
    clamp(127.5·y + 128, 0, 255), truncated."""
    scaled = (127.5 * images.float() + 128).clamp(0, 255).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: list[np.ndarray]) -> np.ndarray:
    """Images (H, W, 3) in a ceil(√n)-column grid, row-major, empty cells black."""
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w, c = images[0].shape
    grid = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
    return grid


def _download_hint(name: str) -> str:
    from vidcli.hub import ALIASES

    alias = next(a.name for a in ALIASES.values() if a.feeds == f"class-conditional:{name}")
    return f"vidcli download {alias} --local-dir weights/{alias}, then set [dit] path"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _output_paths(labels: list[int], options: ClassGenerateOptions) -> tuple[list[Path], Path]:
    """One PNG per sample and the grid; existing files refused unless --overwrite."""
    folder = options.out or Path("outputs")
    paths = [folder / f"{i:03d}-{_slug(class_name(y))}.png" for i, y in enumerate(labels)]
    grid = folder / GRID_NAME
    for target in (*paths, *(sidecar_path(p) for p in paths), grid):
        refuse_stdout(target)  # even with --overwrite: stdout would be lost
        if target.exists() and not options.overwrite:
            raise UsageError(f"{target} already exists; pass --overwrite to replace it")
    return paths, grid


def sidecar_path(path: Path) -> Path:
    """The JSON written beside an image (`000-tench.png` -> `000-tench.png.json`)."""
    return path.with_name(path.name + ".json")


def _write_png(path: Path, array: np.ndarray) -> None:
    from vidcli.media import write_image

    # Existing files were refused before sampling; a file appearing since is ours to replace.
    write_image(path, array, overwrite=True)


def _write_sidecar(
    path: Path, recipe: Recipe, label: int, seed: int, cfg_scale: float, sampler: str
) -> None:
    payload = {
        "label": label,
        "class": class_name(label),
        "seed": seed,
        "cfg_scale": cfg_scale,
        "sampler": sampler,
        "steps": recipe.sample.steps,
        "recipe": dump_recipe(recipe),
    }
    atomic_write_text(sidecar_path(path), json.dumps(payload, indent=2) + "\n")


__all__ = [
    "ClassGenerateOptions",
    "ClassGenerateResult",
    "is_class_conditional",
    "load_model",
    "plan",
    "resolve_labels",
    "run",
    "sample_batches",
]
