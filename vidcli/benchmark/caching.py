"""`vidcli benchmark --caching`: speed against fidelity for every caching method, next to the
uniform control (compute every K-th step, reuse the output otherwise).

All rows sample the same prompt/seed pairs: by default HELD_OUT_PAIRS, disjoint from the
calibration prompts and from the tuning pairs (TUNING_PROMPTS, seeds from the recipe) on which the
default grid's values were chosen, so a threshold is judged on prompts it was not chosen on. Each
row reports the DiT time (the
sampling loop) and end-to-end time (text + sampling + decode) as speedups over uncached sampling,
the evaluations it computed in full / in part / not at all, the block-equivalents it computed
(FLOP-weighted: linear layers per token, attention's core per token pair, so skipped attention and
merged or sparse tokens are charged what they save), and the PSNR / SSIM of its decoded videos
against the uncached ones: mean, worst and 10th percentile over the pairs, since a user sees the
worst case. `vs_uniform_db` compares a row's mean PSNR with the control's at the same number of
full evaluations (uniform's mean PSNR interpolated at the row's FLOP-weighted full-evaluation
equivalents, i.e. its block-equivalents; the control computes whole evaluations only).
Uncached sampling is timed before the first row and again every few rows, and the median of those
runs is the baseline, because a shared machine drifts. On CPU the speedups count process CPU seconds
(`time.process_time`, all threads), which other processes on a shared machine barely disturb;
wall-clock speedups are reported beside them. On CUDA both are wall clock (synchronised).

Rows are `SamplingVariant`s (a name, a plot family, a `--cache` spec and `[sample]` overrides),
so other sampling accelerations (solvers, leaps, token merging) can join the same table and plot:
`register_variants(factory)` with factory(steps) -> list[SamplingVariant].
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import itertools
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidcli.benchmark.caching_cost import CostMeter
from vidcli.benchmark.variants import SamplingVariant
from vidcli.console import log
from vidcli.errors import UsageError
from vidcli.fileio import atomic_path, atomic_write_text, refuse_stdout
from vidcli.metrics import psnr, ssim
from vidcli.sampling.cache import (
    METHODS,
    CacheCalibration,
    CachedDiT,
    build_policy,
    find_calibration,
    parse_cache,
)
from vidcli.sampling.cache.calibration import (
    FILENAME,
    Recorder,
    load_calibration,
    save_calibration,
)
from vidcli.timing import synchronize

# Prompts of the demo model's world (moving shapes). The tuning set, sampled with the recipe's seeds
# (seed + i): the default grid's values were chosen on it; calibration uses another set.
DEFAULT_PROMPTS = (
    "a red circle moving right",
    "a blue square moving down",
    "a green triangle moving left",
    "a yellow circle moving up",
)
CALIBRATION_PROMPTS = (
    "a blue circle moving left",
    "a red square moving up",
    "a yellow triangle moving right",
    "a green square moving down",
)
TUNING_PROMPTS = DEFAULT_PROMPTS
# The evaluation pairs: prompts in neither set above, seeds in neither range (recipe seed + i,
# calibration 1000 + i).
HELD_OUT_PAIRS = (
    ("a red triangle moving down", 7001),
    ("a blue triangle moving up", 7002),
    ("a green circle moving right", 7003),
    ("a yellow square moving left", 7004),
    ("a red circle moving up", 7005),
    ("a blue square moving right", 7006),
    ("a green triangle moving down", 7007),
    ("a yellow triangle moving left", 7008),
)
# Per method, the values swept by default (chosen on the demo model at 20 and 50 steps).
DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "uniform": (2, 3, 4, 5, 6),
    "teacache": (0.1, 0.2, 0.4),
    "adacache": (0.005, 0.01, 0.02),
    "toca": (3, 5),
    "smoothcache": (0.05, 0.1, 0.2),
    "ditfastattn": (0.3, 1.0),
    "fbcache": (0.05, 0.1, 0.2),
    "taylorseer": (3, 5, 7),
    # Caching II: set before any held-out run, from SpeCa's verification error on two tuning
    # prompts (≈ 0.05 per forecast step at 50 steps) and the papers' defaults; not tuned further.
    "foca": (4, 5),
    "speca": ("6:0.3", "8:0.15", "8:0.25", "10:0.1"),
    "magcache": (0.1, 0.3),
    "easycache": (0.1, 0.2, 0.3),
}
BASELINE_EVERY = 6
"""Uncached sampling is re-timed after every this many rows."""


_EXTRA_FACTORIES: list[Callable[[int], list[SamplingVariant]]] = []


def register_variants(factory: Callable[[int], list[SamplingVariant]]) -> None:
    """Add rows to every caching benchmark: factory(steps) -> variants for that step count."""
    _EXTRA_FACTORIES.append(factory)


@dataclass
class CachingOptions:
    """What `vidcli benchmark --caching` runs."""

    recipe: Path | None = None
    """Recipe of the model (default: the bundled demo)."""
    steps: int = 50
    """Sampling steps of every row."""
    methods: list[str] = field(default_factory=list)
    """METHOD[:VALUE] rows (empty: DEFAULT_GRID); the uniform control is always included.
    ["none"] with `calibrate`: calibrate only."""
    prompts: list[str] = field(default_factory=list)
    """Prompts, sampled with the recipe's seeds (empty: HELD_OUT_PAIRS with their own seeds)."""
    samplers: bool = False
    """Also rows for the sampler options: rf2 at half the steps, LPL, TDTM (sampler_variants)."""
    calibrate: bool = False
    """First calibrate TeaCache / SmoothCache / DiTFastAttn on CALIBRATION_PROMPTS."""
    calibration: Path | None = None
    """Calibration file to use, and to write with `calibrate` (default: beside the DiT)."""
    csv: Path | None = None
    plot: Path | None = None
    output: Path | None = None
    """Also write the JSON result here."""
    device: str | None = None
    """`--device`: cpu, cuda or cuda:N (None: CUDA when available)."""
    dtype: str | None = None
    """`--dtype` (None: bf16 on CUDA, fp32 on CPU)."""


@dataclass
class CachingRow:
    variant: str
    family: str
    steps: int
    dit_s: float
    """Seconds in the DiT calls of the sampling loop (all prompts together; CPU seconds on CPU)."""
    total_s: float
    """Text encoding + sampling + decoding (CPU seconds on CPU)."""
    dit_speedup: float
    e2e_speedup: float
    dit_wall_speedup: float
    """The DiT speedup by wall clock (noisy on a shared machine)."""
    full_evals: int
    partial_evals: int
    skipped_evals: int
    blocks_computed: float
    """DiT FLOPs computed (linear per token + attention per token pair), as a fraction of
    uncached sampling's: block-equivalents of the cached calls, dense-call equivalents otherwise."""
    psnr_mean: float
    psnr_min: float
    """The worst pair's PSNR."""
    psnr_max: float
    ssim_mean: float
    psnr_p10: float = math.nan
    """10th percentile of the pairs' PSNR (linear between order statistics)."""
    ssim_min: float = math.nan
    vs_uniform_db: float | None = None
    """Mean PSNR minus the uniform control's at the same full-evaluation equivalents (blocks);
    None outside the control's range."""


@dataclass
class CachingResult:
    env: dict[str, Any]
    rows: list[CachingRow]
    calibration: str | None = None
    files: list[Path] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        lines = [
            f"{'variant':<18} {'DiT x':>6} {'e2e x':>6} {'wall x':>6} {'full':>4} {'part':>4} "
            f"{'skip':>4} "
            f"{'blocks':>6} {'PSNR dB mean / p10 / worst':>26} {'SSIM':>6} {'min':>6} "
            f"{'vs uniform':>10}"
        ]
        for r in self.rows:
            vs = "" if r.vs_uniform_db is None else f"{r.vs_uniform_db:+.2f} dB"
            lines.append(
                f"{r.variant:<18} {r.dit_speedup:6.2f} {r.e2e_speedup:6.2f} "
                f"{r.dit_wall_speedup:6.2f} {r.full_evals:4d} "
                f"{r.partial_evals:4d} {r.skipped_evals:4d} {r.blocks_computed:6.3f} "
                f"{r.psnr_mean:8.2f} / {r.psnr_p10:6.2f} / {r.psnr_min:6.2f} {r.ssim_mean:6.4f} "
                f"{r.ssim_min:6.4f} {vs:>10}"
            )
        return lines + [f"wrote {p}" for p in self.files]


def default_variants(steps: int, methods: list[str]) -> list[SamplingVariant]:
    """The rows: the uniform control's grid, then `methods` (or every method's default grid)."""
    specs = [f"uniform:{int(k)}" for k in DEFAULT_GRID["uniform"]]
    if methods:
        specs += [m for m in methods if not m.startswith("uniform")]
        specs += [m for m in methods if m.startswith("uniform") and m not in specs]
    else:
        for name, values in DEFAULT_GRID.items():
            if name != "uniform":
                integer = METHODS[name].integer
                # speca's grid entries are "K:TAU" strings
                specs += [
                    f"{name}:{v if isinstance(v, str) else int(v) if integer else v}"
                    for v in values
                ]
    variants = []
    for spec in specs:
        parsed = parse_cache(spec, "--methods")
        if parsed.method == "none":
            continue
        variants.append(SamplingVariant(str(parsed), parsed.method, str(parsed)))
    for factory in _EXTRA_FACTORIES:
        variants += factory(steps)
    return variants


def run(options: CachingOptions) -> CachingResult:
    """Calibrate if asked, then sample every variant and compare it with uncached sampling."""
    from vidcli.generate import _valid_size, load_generate_recipe, load_pipeline
    from vidcli.placement import Placement

    recipe = load_generate_recipe(options.recipe, None, [f"sample.steps={options.steps}"])
    variants = default_variants(options.steps, options.methods)  # checks --methods first
    if options.samplers:
        from vidcli.benchmark.sampler_variants import sampler_variants

        variants += sampler_variants(options.steps)
    if options.prompts:
        prompts = list(options.prompts)
        seeds = [recipe.sample.seed + i for i in range(len(prompts))]
    else:
        prompts, seeds = (list(x) for x in zip(*HELD_OUT_PAIRS, strict=True))
    cal_path = options.calibration
    if cal_path is None and recipe.dit.path:
        dit_dir = Path(recipe.dit.path)
        cal_path = (dit_dir if dit_dir.is_dir() else dit_dir.parent) / FILENAME
    if options.calibrate:
        if cal_path is None:
            raise UsageError("--calibrate needs --calibration FILE (the DiT has no folder)")
        _check_writable(cal_path)  # now, not after minutes of calibration
    for path in (options.output, options.csv, options.plot, options.calibrate and cal_path):
        if path:
            refuse_stdout(path)  # now, not after the whole run

    pipe = load_pipeline(recipe, Placement.resolve(options.device, options.dtype))
    sample = recipe.sample
    size = _valid_size(pipe.ae, sample.frames, sample.height, sample.width, False)
    _, frames, lat_h, lat_w = pipe.ae.latent_shape(*size)
    if options.calibrate:
        calibration = calibrate(pipe, sample, size, options.steps)
        if cal_path.is_file():
            calibration = load_calibration(cal_path).merge(calibration)
        try:
            save_calibration(calibration, cal_path)
        except OSError as err:
            raise _unwritable(cal_path, err) from None
        log.info("caching: wrote calibration %s", cal_path)
    if options.methods == ["none"]:  # calibration only
        return CachingResult({"steps": options.steps}, [], str(cal_path))
    calibration = (
        load_calibration(cal_path)
        if cal_path is not None and cal_path.is_file()
        else find_calibration(sample.cache_calibration, recipe.dit.path)
    )

    def sample_with(variant: SamplingVariant | None):
        from vidcli.generate import sample_videos
        from vidcli.sampling.acceleration import attention_config

        row_sample = dataclasses.replace(sample, **(variant.sample if variant else {}))
        counter: CachedDiT | CostMeter
        if variant is not None and parse_cache(variant.cache).method != "none":
            policy = build_policy(parse_cache(variant.cache), calibration, row_sample.steps, frames)
            counter = CachedDiT(pipe.dit, policy, row_sample.steps)
        else:
            patch = pipe.dit.config.patch_size
            counter = CostMeter(
                pipe.dit.forward_video,
                pipe.dit.config,
                attention_config(row_sample),
                (frames, lat_h // patch, lat_w // patch),
                pipe.device,
            )
        timings: dict[str, float] = {}
        timed = _Timed(counter, pipe.device)
        start = time.process_time()
        video = sample_videos(
            pipe, row_sample, prompts, seeds, size, timings=timings, model_fn=timed, hooks=counter
        )
        timings["cpu_total"] = time.process_time() - start
        timings["dit_cpu"], timings["dit_wall"] = timed.cpu, timed.wall
        timings["dit_calls"] = timed.calls
        timings["device"] = pipe.device
        return video, timings, counter

    log.info("caching: uncached reference, %d prompts, %d steps", len(prompts), options.steps)
    reference, ref_timings, _ = sample_with(None)
    baseline = [ref_timings]
    measured = []
    for i, variant in enumerate(variants):
        if i and i % BASELINE_EVERY == 0:
            baseline.append(sample_with(None)[1])
        log.info("caching: %s (%d/%d)", variant.name, i + 1, len(variants))
        video, timings, counter = sample_with(variant)
        measured.append((variant, video, timings, counter))
    baseline.append(sample_with(None)[1])

    dit_base = statistics.median(_dit(t) for t in baseline)
    total_base = statistics.median(_total(t) for t in baseline)
    wall_base = statistics.median(t["dit_wall"] for t in baseline)
    rows = [
        _row(
            v, options.steps, video, reference, timings, counter, (dit_base, total_base, wall_base)
        )
        for v, video, timings, counter in measured
    ]
    _compare_with_uniform(rows)
    env = {
        "model": str(options.recipe or "bundled demo"),
        "steps": options.steps,
        "prompts": prompts,
        "seeds": seeds,
        "size": list(size),
        "device": pipe.device,
        "dtype": str(pipe.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "clock": "process CPU time" if pipe.device == "cpu" else "wall clock",
        "baseline_dit_s": [_dit(t) for t in baseline],
        "baseline_total_s": [_total(t) for t in baseline],
        "baseline_dit_wall_s": [t["dit_wall"] for t in baseline],
    }
    result = CachingResult(env, rows, calibration.source or None)
    if options.output:
        result.files.append(_write_json(result, options.output))
    if options.csv:
        result.files.append(write_csv(rows, options.csv))
    if options.plot:
        result.files.append(write_plot(rows, env, options.plot))
    return result


def _check_writable(path: Path) -> None:
    """UsageError if no file can be written beside `path` (e.g. the default calibration file
    beside a DiT in a read-only install): a real temp file, as root ignores permission bits."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise _unwritable(path, err) from None


def _unwritable(path: Path, err: OSError) -> UsageError:
    return UsageError(
        f"--calibrate: cannot write the calibration to {path} ({err.strerror or err}); "
        "pass --calibration FILE to write it elsewhere"
    )


def calibrate(pipe, sample, size, steps: int) -> CacheCalibration:
    """Uncached sampling of CALIBRATION_PROMPTS with the recorder: TeaCache coefficients and the
    SmoothCache / DiTFastAttn tables for `steps` (TeaCache pools the pairs of this step count)."""
    from vidcli.generate import sample_videos

    recorder = Recorder(steps)
    runner = CachedDiT(pipe.dit, recorder, steps)
    seeds = [1000 + i for i in range(len(CALIBRATION_PROMPTS))]
    run_sample = dataclasses.replace(sample, steps=steps)
    log.info("caching: calibrating on %d prompts at %d steps", len(seeds), steps)
    sample_videos(
        pipe, run_sample, list(CALIBRATION_PROMPTS), seeds, size, model_fn=runner, hooks=runner
    )
    return recorder.calibration()


class _Timed:
    """A model_fn that adds up the CPU and (synchronised) wall seconds of its calls."""

    def __init__(self, fn, device: str):
        self.fn, self.device, self.cpu, self.wall, self.calls = fn, device, 0.0, 0.0, 0

    def __call__(self, *args):
        self.calls += 1
        synchronize(self.device)
        cpu, wall = time.process_time(), time.perf_counter()
        out = self.fn(*args)
        synchronize(self.device)
        self.cpu += time.process_time() - cpu
        self.wall += time.perf_counter() - wall
        return out


def _dit(timings: dict[str, float]) -> float:
    """The DiT seconds the speedups use: CPU seconds on CPU, wall seconds on a GPU."""
    return timings["dit_cpu"] if timings["device"] == "cpu" else timings["dit_wall"]


def _total(timings: dict[str, float]) -> float:
    if timings["device"] == "cpu":
        return timings["cpu_total"]
    return timings["text"] + timings["sample"] + timings["decode"]


def _row(variant, steps, video, reference, timings, counter, bases):
    dit_base, total_base, wall_base = bases
    # Videos in [-1, 1]: PSNR/SSIM on [0, 1].
    a, b = (video + 1) / 2, (reference + 1) / 2
    psnrs = [psnr(a[i], b[i]) for i in range(len(a))]
    ssims = [ssim(a[i], b[i]) for i in range(len(a))]
    # inf (a pair identical to uncached) would poison the interpolation: order statistics only
    ordered = sorted(psnrs)
    pos = 0.1 * (len(ordered) - 1)
    lo, hi = ordered[math.floor(pos)], ordered[math.ceil(pos)]
    p10 = lo if lo == hi else lo + (hi - lo) * (pos - math.floor(pos))
    stats = counter.stats if isinstance(counter, CachedDiT) else None
    return CachingRow(
        variant=variant.name,
        family=variant.family,
        steps=steps,
        dit_s=_dit(timings),
        total_s=_total(timings),
        dit_speedup=dit_base / _dit(timings),
        e2e_speedup=total_base / _total(timings),
        dit_wall_speedup=wall_base / timings["dit_wall"],
        # rf2 evaluates twice per step and a leap stops early: count the calls
        full_evals=stats.full_evals if stats else timings["dit_calls"],
        partial_evals=stats.partial_evals if stats else 0,
        skipped_evals=stats.skipped_evals if stats else 0,
        # Uncached rows: dense-call equivalents per step of the grid (rf2 evaluates twice per
        # step, a leap stops early, merged or sparse attention costs less per call).
        blocks_computed=(
            stats.blocks_computed / stats.blocks_total if stats else counter.evaluations / steps
        ),
        psnr_mean=statistics.fmean(psnrs),
        psnr_min=min(psnrs),
        psnr_max=max(psnrs),
        ssim_mean=statistics.fmean(ssims),
        psnr_p10=p10,
        ssim_min=min(ssims),
    )


def _compare_with_uniform(rows: list[CachingRow]) -> None:
    """vs_uniform_db: PSNR minus the control's, linearly interpolated at the same cost."""
    control = sorted((r.blocks_computed, r.psnr_mean) for r in rows if r.family == "uniform")
    for r in rows:
        if r.family == "uniform" or len(control) < 2:
            continue
        x = r.blocks_computed
        for (x0, y0), (x1, y1) in itertools.pairwise(control):
            if x0 <= x <= x1:
                y = y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
                r.vs_uniform_db = r.psnr_mean - y
                break


def _write_json(result: CachingResult, path: Path) -> Path:
    # PSNR is inf for a row identical to uncached sampling: null in strict JSON.
    rows = [
        {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        for row in map(dataclasses.asdict, result.rows)
    ]
    payload = {"env": result.env, "calibration": result.calibration, "rows": rows}
    atomic_write_text(path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return path


def write_csv(rows: list[CachingRow], path: Path) -> Path:
    """One line per row, the CachingRow fields as columns."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv_module.DictWriter(
            f, fieldnames=[fl.name for fl in dataclasses.fields(CachingRow)]
        )
        writer.writeheader()
        for row in rows:
            writer.writerow(dataclasses.asdict(row))
    return path


def write_plot(rows: list[CachingRow], env: dict[str, Any], path: Path) -> Path:
    """Pareto plots, mean PSNR vs uncached (y, a whisker down to the worst pair) against the
    measured DiT speedup (left), the wall-clock DiT speedup (middle) and the work speedup
    1 / blocks computed (right, deterministic); one series per family, the uniform control dashed.
    Series are drawn in order of cost, so measurement noise shows as zigzags."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed", hint="pip install matplotlib"
        ) from None
    fig = Figure(figsize=(17, 5.5), dpi=110, layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    families: dict[str, list[CachingRow]] = {}
    for r in rows:
        families.setdefault(r.family, []).append(r)
    markers = "osD^v<>PXh*"
    for ax, (xkey, xlabel) in zip(
        axes,
        (
            (lambda r: r.dit_speedup, "measured DiT speedup vs uncached (x)"),
            (lambda r: r.dit_wall_speedup, "wall-clock DiT speedup vs uncached (x)"),
            (lambda r: 1 / r.blocks_computed, "work speedup: 1 / blocks computed (x)"),
        ),
        strict=True,
    ):
        for i, (family, members) in enumerate(families.items()):
            members = sorted(members, key=lambda r: -r.blocks_computed)
            xs, ys = [xkey(r) for r in members], [r.psnr_mean for r in members]
            # whisker from the mean down to the worst pair (none where the worst is lossless)
            low = [r.psnr_mean - r.psnr_min if math.isfinite(r.psnr_min) else 0 for r in members]
            whiskers = ([0 if math.isnan(v) else v for v in low], [0] * len(members))
            if family == "uniform":
                ax.errorbar(xs, ys, whiskers, fmt="k--", marker="o", linewidth=1.5, capsize=2,
                            label="uniform control (K)")  # fmt: skip
                for r, x in zip(members, xs, strict=True):
                    ax.annotate(r.variant.split(":")[1], (x, r.psnr_mean), fontsize=7)
            else:
                ax.errorbar(xs, ys, whiskers, marker=markers[i % len(markers)], linestyle=":",
                            capsize=2, label=family)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR vs uncached (dB): mean over pairs, whisker to the worst")
    axes[-1].legend(fontsize=8)
    fig.suptitle(
        f"{env['model']}: {env['steps']} steps, {len(env['prompts'])} held-out prompt/seed pairs, "
        f"{env['device']}",
        fontsize=10,
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
