"""Training-free caching for the MMDiT: one mechanism (`CachedDiT`), one policy per method.

`--cache METHOD[:VALUE]` / `[sample] cache = "METHOD[:VALUE]"` selects a method; VALUE is its
threshold, or its refresh interval K for the periodic methods (uniform, toca, taylorseer,
taylorseer-lite, foca); speca takes `K[:TAU]`, its interval and its verification threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vidcli.console import log
from vidcli.errors import UsageError
from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.calibration import FILENAME, CacheCalibration, load_calibration
from vidcli.sampling.cache.runner import CachedDiT, CacheStats


@dataclass(frozen=True)
class Method:
    """A selectable caching method and the meaning of its value."""

    name: str
    value: str
    """"threshold" (a float >= 0) or "interval" (an integer K >= 1)."""
    default: float
    summary: str
    second: float | None = None
    """The default of a second value `METHOD:VALUE:SECOND` (a threshold >= 0), None: no second."""

    @property
    def integer(self) -> bool:
        return self.value == "interval"


METHODS = {
    m.name: m
    for m in (
        Method("none", "threshold", 0.0, "no caching (the default)"),
        Method("uniform", "interval", 3, "control: compute every K-th step, reuse the output"),
        Method("teacache", "threshold", 0.2, "accumulated rescaled change of block 0's input"),
        Method("adacache", "threshold", 0.08, "codebook schedule from a mid-block residual rate"),
        Method("toca", "interval", 4, "full every K steps, top tokens recomputed in between"),
        Method("smoothcache", "threshold", 0.15, "calibrated static per-module-type schedule"),
        Method("ditfastattn", "threshold", 0.1, "attention shared across steps and CFG branches"),
        Method("fbcache", "threshold", 0.05, "skip the rest when block 0's residual is stable"),
        Method("taylorseer", "interval", 5, "full every K steps, Taylor-forecast in between"),
        Method("taylorseer-lite", "interval", 5, "TaylorSeer forecasting the whole stack"),
        Method("foca", "interval", 5, "full every K steps, BDF2 + Heun forecast in between"),
        Method("speca", "interval", 8, "per-sample forecast, verified, recomputed on failure", 0.1),
        Method("magcache", "threshold", 0.1, "skip while calibrated residual-ratio error < δ"),
        Method("easycache", "threshold", 0.1, "per-sample reuse until an error budget τ is spent"),
    )
}


@dataclass(frozen=True)
class CacheSpec:
    """A parsed `METHOD[:VALUE]`."""

    method: str
    value: float
    second: float | None = None

    def __str__(self) -> str:
        if self.method == "none":
            return "none"
        value = int(self.value) if METHODS[self.method].integer else self.value
        return f"{self.method}:{value}" + ("" if self.second is None else f":{self.second}")


def method_list() -> str:
    return ", ".join(
        f"{m.name}"
        + ("" if m.name == "none" else f"[:{m.value}]")
        + ("" if m.second is None else "[:threshold]")
        for m in METHODS.values()
    )


def parse_cache(spec: str, source: str = "--cache") -> CacheSpec:
    """`METHOD[:VALUE]` -> CacheSpec; a bad name or value is a UsageError listing the choices."""
    name, _, raw = str(spec).strip().partition(":")
    name = name.lower()
    if name not in METHODS:
        raise UsageError(
            f"{source} {spec!r}: unknown caching method; choose one of {method_list()}"
        )
    method = METHODS[name]
    if not raw:
        return CacheSpec(name, method.default, method.second)
    if name == "none":
        raise UsageError(f"{source} {spec!r}: 'none' takes no value")
    raw, _, raw_second = raw.partition(":")
    second = method.second
    if raw_second:
        try:
            second = float(raw_second) if method.second is not None else float("nan")
        except ValueError:
            second = float("nan")
        if not (second == second and 0 <= second < float("inf")):
            raise UsageError(
                f"{source} {spec!r}: "
                + (
                    f"{name} takes METHOD:K:THRESHOLD with a threshold >= 0 "
                    f"(e.g. {name}:{int(method.default)}:{method.second})"
                    if method.second is not None
                    else f"{name} takes one value"
                )
            )
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if method.integer and not (value == value and value >= 1 and value == int(value)):
        raise UsageError(
            f"{source} {spec!r}: {name} takes an integer interval K >= 1 (e.g. {name}:4)"
        )
    if not method.integer and not (value == value and value >= 0 and value != float("inf")):
        raise UsageError(
            f"{source} {spec!r}: {name} takes a threshold >= 0 (e.g. {name}:{method.default})"
        )
    return CacheSpec(name, value, second)


def find_calibration(explicit: str, dit_path: str) -> CacheCalibration:
    """`[sample] cache_calibration`, else `cache-calibration.json` in the DiT folder, else empty."""
    if explicit:
        return load_calibration(explicit)
    if dit_path:
        candidate = Path(dit_path)
        candidate = (candidate if candidate.is_dir() else candidate.parent) / FILENAME
        if candidate.is_file():
            return load_calibration(candidate)
    return CacheCalibration()


def build_policy(
    spec: CacheSpec, calibration: CacheCalibration, num_steps: int, frames: int = 1
) -> CachePolicy | None:
    """The policy of a spec for a run of `num_steps` steps (None for "none").

    frames: latent frames (AdaCache's motion score). SmoothCache, DiTFastAttn and MagCache
    need a calibration for this step count; TeaCache falls back to f(x) = x without one.
    """
    from vidcli.sampling.cache import (
        adacache,
        ditfastattn,
        easycache,
        fbcache,
        foca,
        magcache,
        smoothcache,
        speca,
        taylorseer,
        teacache,
        toca,
        uniform,
    )

    v, steps = spec.value, str(num_steps)
    hint = f"vidcli benchmark --caching --calibrate --steps {num_steps}"
    where = calibration.source or "this model (no cache-calibration.json)"
    match spec.method:
        case "none":
            return None
        case "uniform":
            return uniform.UniformCache(int(v))
        case "teacache":
            if calibration.teacache is None:
                log.warning("teacache: %s has no coefficients; using f(x) = x (%s)", where, hint)
                return teacache.TeaCache(v)
            return teacache.TeaCache(v, calibration.teacache)
        case "adacache":
            return adacache.AdaCache(v, num_steps, frames)
        case "toca":
            return toca.ToCa(int(v))
        case "smoothcache":
            if steps not in calibration.smoothcache:
                raise UsageError(f"smoothcache: {where} has no calibration for {steps} steps", hint)
            return smoothcache.SmoothCache(v, calibration.smoothcache[steps], num_steps)
        case "ditfastattn":
            if steps not in calibration.ditfastattn:
                raise UsageError(f"ditfastattn: {where} has no calibration for {steps} steps", hint)
            return ditfastattn.DiTFastAttn(v, calibration.ditfastattn[steps])
        case "fbcache":
            return fbcache.FirstBlockCache(v)
        case "taylorseer":
            return taylorseer.TaylorSeer(int(v))
        case "taylorseer-lite":
            return taylorseer.TaylorSeerLite(int(v))
        case "foca":
            return foca.FoCa(int(v))
        case "speca":
            return speca.SpeCa(int(v), spec.second)
        case "magcache":
            if steps not in calibration.magcache:
                raise UsageError(f"magcache: {where} has no calibration for {steps} steps", hint)
            return magcache.MagCache(v, calibration.magcache[steps])
        case "easycache":
            return easycache.EasyCache(v)
    raise AssertionError(spec.method)


def cache_for_sample(
    spec: str, calibration: str, dit_path: str, model, num_steps: int, frames: int
) -> CachedDiT | None:
    """The runner for `[sample] cache` / `cache_calibration` (None when caching is off).

    frames: latent frames of the video (AdaCache's motion score).
    """
    parsed = parse_cache(spec, "[sample] cache")
    if parsed.method == "none":
        return None
    policy = build_policy(parsed, find_calibration(calibration, dit_path), num_steps, frames)
    return CachedDiT(model, policy, num_steps)


def cache_report(spec: str, cached: CachedDiT | None) -> dict:
    """The result fields of a run: method, value and the evaluation counts (None uncached)."""
    parsed = parse_cache(spec, "[sample] cache")
    stats = cached.stats if cached is not None else None
    return {
        "cache": parsed.method,
        "cache_value": None if parsed.method == "none" else parsed.value,
        "full_evals": stats.full_evals if stats else None,
        "partial_evals": stats.partial_evals if stats else None,
        "skipped_evals": stats.skipped_evals if stats else None,
    }


__all__ = [
    "METHODS",
    "CacheCalibration",
    "CacheSpec",
    "CacheStats",
    "CachedDiT",
    "build_policy",
    "cache_for_sample",
    "cache_report",
    "find_calibration",
    "parse_cache",
]
