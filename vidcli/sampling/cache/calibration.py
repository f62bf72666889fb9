"""Per-model calibration of the caching methods that need one, stored as JSON beside the weights.

`vidcli benchmark --caching --calibrate` runs uncached sampling on calibration prompts with
`Recorder` as the policy and writes `cache-calibration.json`:

- "teacache": degree-4 coefficients (highest power first) fitted to the (δ(m_n, m_{n-1}),
  δ(O_n, O_{n-1})) pairs of every step of every prompt and every calibrated step count, O = the
  model output (paper §4.1; the authors' fitting script is unpublished); "teacache_pairs" keeps
  the pairs per step count, so calibrating another step count refits on all of them;
- "smoothcache": {steps: {module type: E[j-1][i]}} layer-output error curves;
- "ditfastattn": {steps: losses[n][layer][candidate]} one-layer-at-a-time output losses;
- "magcache": {steps: γ[n]} MagCache's residual magnitude ratios (γ[0] = 1), from one sample: the
  first calibration prompt's conditional rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vidcli.errors import UsageError
from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.ditfastattn import CANDIDATES, AttentionHook, output_loss
from vidcli.sampling.cache.hooks import (
    ComputeHook,
    StepRun,
    Trunk,
    put_rows,
    relative_l1,
    take_rows,
)
from vidcli.sampling.cache.magcache import magnitude_ratio
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, module_types
from vidcli.sampling.cache.smoothcache import LOOKAHEAD
from vidcli.sampling.cache.teacache import indicator

FILENAME = "cache-calibration.json"
FORMAT = "vidcli-cache-calibration-v1"


@dataclass
class CacheCalibration:
    """Calibration data of one model (see the module docstring for the layout)."""

    teacache: list[float] | None = None
    teacache_pairs: dict[str, list[list[float]]] = field(default_factory=dict)
    smoothcache: dict[str, dict[str, list[list[float | None]]]] = field(default_factory=dict)
    ditfastattn: dict[str, list[list[list[float]]]] = field(default_factory=dict)
    magcache: dict[str, list[float]] = field(default_factory=dict)
    source: str = ""
    """Where it was loaded from (not saved)."""

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "teacache": self.teacache,
            "teacache_pairs": self.teacache_pairs,
            "smoothcache": self.smoothcache,
            "ditfastattn": self.ditfastattn,
            "magcache": self.magcache,
        }

    def merge(self, other: CacheCalibration) -> CacheCalibration:
        """This calibration updated with `other`'s entries (other wins; TeaCache is refitted on
        the pairs of both)."""
        pairs = {**self.teacache_pairs, **other.teacache_pairs}
        pooled = [tuple(p) for group in pairs.values() for p in group]
        return CacheCalibration(
            fit_teacache(pooled) if pooled else other.teacache or self.teacache,
            pairs,
            {**self.smoothcache, **other.smoothcache},
            {**self.ditfastattn, **other.ditfastattn},
            {**self.magcache, **other.magcache},
            self.source,
        )


def load_calibration(path: str | Path) -> CacheCalibration:
    """Read a calibration file; a bad file is a UsageError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"cache calibration {path}: file not found") from None
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cache calibration {path}: cannot read it ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UsageError(f"cache calibration {path}: not a {FORMAT} file")
    coeffs = data.get("teacache")
    if coeffs is not None and (
        not isinstance(coeffs, list) or not all(isinstance(c, int | float) for c in coeffs)
    ):
        raise UsageError(f"cache calibration {path}: 'teacache' must be a list of numbers")
    return CacheCalibration(
        coeffs,
        data.get("teacache_pairs") or {},
        data.get("smoothcache") or {},
        data.get("ditfastattn") or {},
        data.get("magcache") or {},
        str(path),
    )


def save_calibration(calibration: CacheCalibration, path: str | Path) -> None:
    from vidcli.fileio import atomic_write_text

    atomic_write_text(Path(path), json.dumps(calibration.to_json(), indent=1) + "\n")


def fit_teacache(pairs: list[tuple[float, float]], degree: int = 4) -> list[float]:
    """np.polyfit of output change on indicator change: coefficients highest power first."""
    if len(pairs) <= degree:
        raise UsageError(f"TeaCache calibration needs more than {degree} step pairs")
    x, y = np.array(pairs, dtype=np.float64).T
    return [float(c) for c in np.polyfit(x, y, degree)]


class _RecordingHook(ModuleHook):
    """Computes everything and hands module outputs and attention outputs to the recorder."""

    def __init__(self, index: int, recorder: Recorder):
        super().__init__(index, recorder.record_module)
        self.recorder = recorder

    def attention(self, block, img_in, txt_in, cos, sin):
        out = super().attention(block, img_in, txt_in, cos, sin)
        self.recorder.keep_attention(self.index, out)
        return out

    def single(self, block, x_mod, cos, sin):
        self.work += 1.0
        q, k, v, mlp = block.project(x_mod)
        attn = block.attend(q, k, v, cos, sin)
        self.recorder.keep_attention(self.index, attn)
        out = block.merge(attn, mlp)
        self.recorder.record_module((self.index, "out"), lambda: out)
        return out


class Recorder(CachePolicy):
    """Uncached sampling that records what the calibrations need (one step count per run)."""

    name = "calibrate"

    def __init__(self, num_steps: int, ditfastattn: bool = True):
        self.num_steps, self.with_dfa = num_steps, ditfastattn
        self.pairs: list[tuple[float, float]] = []
        self.error_sum: dict[str, np.ndarray] = {}
        self.error_count: dict[str, np.ndarray] = {}
        self.losses_sum = None
        self.runs = 0
        self.magnitude_ratios = [1.0] * num_steps
        self.reset()

    def reset(self) -> None:
        self.history: dict[Key, list[Value]] = {}
        self.attention: dict[int, Value] = {}
        self.previous_attention: dict[int, Value] = {}
        self.prev_m = self.prev_out = self.prev_residual = None
        self.depth = 0
        self.step = 0

    def fork(self) -> CachePolicy:
        """rf2's midpoints compute plainly and record nothing: the tables are indexed by step, and
        the steps' own evaluations (at the schedule's times, as an Euler run's) fill them."""
        return CachePolicy()

    def keep_attention(self, index: int, value: Value) -> None:
        """This step's attention output of a layer, over the rows of the last full layout."""
        self.attention[index] = put_rows(self.previous_attention.get(index), value)

    def record_module(self, key: Key, compute) -> Value:
        value = compute()
        past = self.history.setdefault(key, [])
        kind = module_types(key, self.depth)
        if kind not in self.error_sum:
            self.error_sum[kind] = np.zeros((LOOKAHEAD, self.num_steps))
            self.error_count[kind] = np.zeros((LOOKAHEAD, self.num_steps))
        for j in range(1, min(LOOKAHEAD, len(past)) + 1):
            old = take_rows(past[-j], _batch(value))
            err = _l1(old, value) / max(_l1(value, None), 1e-12)
            self.error_sum[kind][j - 1, self.step - j] += err
            self.error_count[kind][j - 1, self.step - j] += 1
        past.append(put_rows(past[-1] if past else None, value))
        del past[:-LOOKAHEAD]
        return value

    def __call__(self, run: StepRun) -> torch.Tensor:
        self.depth, self.step = len(run.model.double_blocks), run.step
        if run.step == 0:
            self.runs += 1
        m = indicator(run)
        self.previous_attention, self.attention = self.attention, {}
        trunks: list[Trunk] = []
        trunk = run.start()
        for i in range(run.num_blocks):
            trunks.append(trunk)
            trunk = run.run_blocks(trunk, i, i + 1, lambda j: _RecordingHook(j, self))
        out = run.head(trunk.image)
        if self.runs == 1:  # MagCache calibrates on one sample: prompt 0's conditional row
            residual = (trunk.image - run.embedded.x)[0]
            if self.prev_residual is not None:
                self.magnitude_ratios[run.step] = magnitude_ratio(residual, self.prev_residual)
            self.prev_residual = residual
        if self.prev_m is not None:
            B = run.batch
            x = relative_l1(m, take_rows(self.prev_m, B))
            self.pairs.append((x, relative_l1(out, take_rows(self.prev_out, B))))
        self.prev_m, self.prev_out = put_rows(self.prev_m, m), put_rows(self.prev_out, out)
        if self.with_dfa:
            self._ditfastattn_losses(run, trunks, out)
        return out

    def _ditfastattn_losses(self, run: StepRun, trunks: list[Trunk], out: torch.Tensor) -> None:
        L = run.num_blocks
        if self.losses_sum is None:
            self.losses_sum = np.zeros((self.num_steps, L, len(CANDIDATES)))
        if run.step == 0:
            return
        for i in range(L):
            for c, technique in enumerate(CANDIDATES):
                cache = dict(self.previous_attention)

                def hook_for(j: int, i=i, technique=technique, cache=cache) -> ComputeHook | None:
                    if j != i:
                        return None
                    return AttentionHook(j, technique, cache, run.rows)

                image = run.run_blocks(trunks[i], i, hook_for=hook_for).image
                self.losses_sum[run.step, i, c] += output_loss(out, run.head(image))
        run.work = float(L)  # the extra passes are calibration, not sampling

    def calibration(self) -> CacheCalibration:
        """What the runs recorded, as a calibration of this step count."""
        coefficients, curves, losses = self.result()
        steps = str(self.num_steps)
        pairs = [list(p) for p in self.pairs]
        return CacheCalibration(
            coefficients,
            {steps: pairs},
            {steps: curves},
            {steps: losses},
            {steps: list(self.magnitude_ratios)},
        )

    def result(self) -> tuple[list[float], dict, list | None]:
        """(TeaCache coefficients, SmoothCache curves, DiTFastAttn losses) over all runs."""
        curves = {}
        for kind, total in self.error_sum.items():
            count = self.error_count[kind]
            # None where step i + j lies past the end: never asked for by a schedule.
            curves[kind] = [
                [t / c if c else None for t, c in zip(row_t, row_c, strict=True)]
                for row_t, row_c in zip(total.tolist(), count.tolist(), strict=True)
            ]
        losses = None
        if self.losses_sum is not None:
            losses = (self.losses_sum / max(self.runs, 1)).tolist()
        return fit_teacache(self.pairs), curves, losses


def _l1(a: Value, b: Value | None) -> float:
    """Σ|a - b| (or Σ|a|) over a tensor or a tuple of tensors."""
    parts_a = a if isinstance(a, tuple) else (a,)
    if b is None:
        return float(sum(p.abs().sum().item() for p in parts_a))
    parts_b = b if isinstance(b, tuple) else (b,)
    return float(sum((p - q).abs().sum().item() for p, q in zip(parts_a, parts_b, strict=True)))


def _batch(value: Value) -> int:
    return (value[0] if isinstance(value, tuple) else value).shape[0]
