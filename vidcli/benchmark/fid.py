"""`vidcli benchmark --fid`: Fréchet Inception Distance of generated images against a reference.

FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½ over 2048-d pool features of the FID Inception
(`inception.py`, pytorch-fid's network and weights); Σ is the unbiased covariance (N − 1), as
pytorch-fid computes it.

The trace of the square root is taken without a general (complex) matrix square root: with
P = Σ₁^½ Σ₂^½ (each root from a symmetric eigendecomposition, round-off negative eigenvalues
clipped), PᵀP = Σ₂^½ Σ₁ Σ₂^½ is similar to Σ₁Σ₂, so tr (Σ₁Σ₂)^½ is the sum of P's singular
values. SVD finds them to ε·‖P‖ absolute, where the square roots of eigenvalues of Σ₁^½Σ₂Σ₁^½
would turn the round-off of its zero eigenvalues (N < 2048 samples: rank-deficient covariances)
into errors of √ε.

Reference: a folder of images or precomputed statistics (.npz with `mu` and `sigma`, as
pytorch-fid's `--save-stats` and the ADM/DC-AE evaluation suites write them). Generated: a folder
of images, or N samples of a class-conditional recipe (labels i mod 1000: balanced classes, as
upstream's 50k-sample evaluation), kept in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidcli.console import log, progress_bar
from vidcli.errors import UsageError
from vidcli.fileio import atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
Extractor = Callable[[np.ndarray], np.ndarray]
"""uint8 images (N, H, W, 3) -> features (N, D)."""


@dataclass(frozen=True)
class Statistics:
    """Mean (D,) and covariance (D, D) of a set's features, float64."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int
    """Images the statistics were computed from (0 when a stats file does not say)."""


def statistics(features: np.ndarray) -> Statistics:
    """μ and the unbiased Σ of features (N, D), N ≥ 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise UsageError(f"FID needs features of at least 2 images, got shape {f.shape}")
    return Statistics(f.mean(axis=0), np.cov(f, rowvar=False), len(f))


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix (negative round-off eigenvalues clipped)."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: Statistics, b: Statistics) -> float:
    """‖μa − μb‖² + tr Σa + tr Σb − 2 tr (Σa Σb)^½ (see the module docstring)."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise UsageError(
            f"FID statistics of different sizes: {a.mu.shape[0]}-d and {b.mu.shape[0]}-d "
            "features (were the reference stats made with the FID Inception's 2048-d pool?)"
        )
    trace_sqrt = np.linalg.svd(_sqrt_psd(a.sigma) @ _sqrt_psd(b.sigma), compute_uv=False).sum()
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_sqrt)


def load_statistics(path: Path) -> Statistics:
    """`mu` (D,) and `sigma` (D, D) from an .npz file (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma = data["mu"], data["sigma"]
            count = int(data["count"]) if "count" in data else 0
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--reference {path}: not an .npz with mu and sigma ({err})") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UsageError(
            f"--reference {path}: mu {mu.shape} and sigma {sigma.shape}; expected (D,) and (D, D)"
        )
    return Statistics(mu.astype(np.float64), sigma.astype(np.float64), count)


def save_statistics(path: Path, stats: Statistics) -> Path:
    """Write `mu`, `sigma` and `count` as an .npz, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=stats.mu, sigma=stats.sigma, count=stats.count)
    return path


def image_files(folder: Path, option: str) -> list[Path]:
    """The images of a folder (not recursive), sorted by name; UsageError when there are none."""
    if not folder.is_dir():
        raise UsageError(f"{option} {folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UsageError(
            f"{option} {folder}: {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); FID needs 2+"
        )
    return files


def read_image(path: Path) -> np.ndarray:
    """One image as uint8 (H, W, 3)."""
    from vidcli.media import read_frames

    return read_frames(path, num_frames=1)[0]


def folder_features(files: list[Path], extract: Extractor, batch_size: int, what: str):
    """Features (N, D) of image files, `batch_size` at a time (images of one size per call)."""
    chunks = []
    with progress_bar() as bar:
        task = bar.add_task(what, total=len(files), status="")
        for first in range(0, len(files), batch_size):
            images = [read_image(p) for p in files[first : first + batch_size]]
            same = all(i.shape == images[0].shape for i in images)
            groups = [np.stack(images)] if same else [i[None] for i in images]
            chunks += [extract(g) for g in groups]
            bar.advance(task, len(images))
    return np.concatenate(chunks)


@dataclass
class FIDOptions:
    """What `vidcli benchmark --fid` compares."""

    reference: Path | None = None
    """A folder of reference images, or an .npz of their statistics (mu, sigma)."""
    images: Path | None = None
    """A folder of generated images."""
    recipe: Path | None = None
    """A class-conditional recipe to sample `samples` images from (instead of `images`)."""
    samples: int | None = None
    inception: Path | None = None
    """FID Inception weights (.safetensors)."""
    save_stats: Path | None = None
    """Also write the reference folder's statistics here (.npz)."""
    batch_size: int = 1
    device: str | None = None
    dtype: str | None = None
    """Compute dtype of the generating model (the Inception runs in fp32)."""


@dataclass
class FIDResult:
    fid: float
    reference: str
    generated: str
    reference_count: int
    generated_count: int
    feature_dim: int
    seconds: float
    statistics_written: str | None = None

    def stdout_lines(self) -> list[str]:
        lines = [
            f"FID {self.fid:.4f}: {self.generated_count} generated ({self.generated}) vs "
            f"{self.reference_count or 'unknown'} reference images ({self.reference}), "
            f"{self.feature_dim}-d features"
        ]
        return lines + ([f"wrote {self.statistics_written}"] if self.statistics_written else [])


def check(options: FIDOptions) -> None:
    """Every option combination, before anything is loaded."""
    if options.reference is None:
        raise UsageError("--fid needs --reference: a folder of images or an .npz of mu and sigma")
    if (options.images is None) == (options.recipe is None):
        raise UsageError("--fid needs one of --images FOLDER or --recipe RECIPE --samples N")
    if options.recipe is not None and (options.samples is None or options.samples < 2):
        raise UsageError(f"--fid --recipe needs --samples N >= 2, got {options.samples}")
    if options.recipe is None and options.samples is not None:
        raise UsageError(
            "--samples counts images generated from --recipe; add it or drop --samples"
        )
    if options.save_stats is not None and not options.reference.is_dir():
        raise UsageError(
            "--save-stats writes a reference folder's statistics; --reference is not one"
        )
    if options.reference.is_file():
        if options.reference.suffix != ".npz":
            raise UsageError(f"--reference {options.reference}: expected a folder or an .npz file")
    else:
        image_files(options.reference, "--reference")
    if options.images is not None:
        image_files(options.images, "--images")


def run(options: FIDOptions, extract: Extractor | None = None) -> FIDResult:
    """FID of the generated set against the reference; `extract` defaults to the FID Inception."""
    from vidcli import devices
    from vidcli.benchmark.inception import inception_features, load_inception

    check(options)
    recipe = _class_recipe(options.recipe) if options.recipe is not None else None
    where = devices.resolve_device(options.device)
    started = time.perf_counter()
    if extract is None:
        extract = inception_features(load_inception(options.inception, where))
    written = None
    if options.reference.is_dir():
        files = image_files(options.reference, "--reference")
        reference = statistics(folder_features(files, extract, options.batch_size, "reference"))
        if options.save_stats is not None:
            written = str(save_statistics(options.save_stats, reference))
    else:
        reference = load_statistics(options.reference)
    if options.images is not None:
        files = image_files(options.images, "--images")
        features = folder_features(files, extract, options.batch_size, "generated")
        generated_from = str(options.images)
    else:
        dtype = devices.resolve_dtype(options.dtype, where)
        features = _sampled_features(recipe, options, extract, where, dtype)
        generated_from = f"{options.recipe}, {options.samples} samples"
    generated = statistics(features)
    fid = frechet_distance(generated, reference)
    log.info("FID %.4f (%d vs %d images)", fid, generated.count, reference.count)
    return FIDResult(
        fid=fid,
        reference=str(options.reference),
        generated=generated_from,
        reference_count=reference.count,
        generated_count=generated.count,
        feature_dim=int(generated.mu.shape[0]),
        seconds=time.perf_counter() - started,
        statistics_written=written,
    )


def _class_recipe(path: Path):
    from vidcli.class_generate import is_class_conditional
    from vidcli.recipe import load_recipe

    recipe = load_recipe(path)
    if not is_class_conditional(recipe):
        raise UsageError(
            f"--recipe {path}: [dit] preset {recipe.dit.preset} is not class-conditional; "
            "--fid samples DC-AE-Diffusion recipes (or pass --images FOLDER)"
        )
    return recipe


def _sampled_features(recipe, options: FIDOptions, extract: Extractor, device, dtype):
    """Features of `samples` images of `recipe`, labels i mod 1000, never written to disk."""
    from vidcli.class_generate import load_model, sample_batches
    from vidcli.models.dcae_diffusion import NUM_CLASSES

    model = load_model(recipe, device, dtype)
    labels = [i % NUM_CLASSES for i in range(options.samples)]
    chunks = []
    with progress_bar() as bar:
        task = bar.add_task("generate", total=len(labels), status="")
        for _, _, images in sample_batches(model, labels, recipe.sample, options.batch_size):
            chunks.append(extract(images))
            bar.advance(task, len(images))
    return np.concatenate(chunks)
