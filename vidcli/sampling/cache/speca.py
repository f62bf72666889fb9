"""SpeCa, speculative feature caching (Liu et al., arXiv 2509.11628): forecast module outputs for
up to K-1 steps past each prompt's last full step, verify every forecast with a cheap check, and
recompute the prompts whose check fails. Compute is allocated per sample: in a batch, only the
rows of the rejected prompts run the full DiT.

What it forecasts: TaylorSeer's modules (double blocks' attention and MLPs, single blocks' linear2
output), first order (Δ⁰ + k·Δ¹, exact on features linear in the step), kept per (module, CFG
branch, prompt) with each prompt's own clock, per evaluation stream. Schedule per prompt: the
first 3 steps full; then a prompt is recomputed when its forecast fails verification or K steps
have passed since its last full step.

Verification (parameter-free): the deepest double block's image MLP is recomputed on every 8th
image token of the forecast trajectory and compared with its forecast; the prompt's relative L1
error e = Σ|forecast - recomputed| / Σ|recomputed| over those tokens (all its CFG rows) must stay
below τ. The MLP is per token, so the subset is exact for those tokens; it costs 1/8 of one MLP.

Published SpeCa differs: its draft is TaylorSeer of a configurable order, and it verifies on a
deep layer's full output with a relative-error threshold that scales with the step; the paper
reports 1.7-3.5 % overhead. Its verification layer and threshold schedule were not re-read here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidcli.errors import UsageError
from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun
from vidcli.sampling.cache.modules import Key, ModuleHook, Value, map_value
from vidcli.sampling.cache.samples import charge, merge_rows, sample_rows, sub_run
from vidcli.sampling.cache.taylorseer import WARMUP_STEPS, branch_rows, cat_rows

TOKEN_STRIDE = 8
"""Every this-many-th image token is recomputed for the check."""


def _per_row(t: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """k (rows,) broadcast over t's trailing dimensions (the clocks live on the CPU, t may not)."""
    return k.to(device=t.device, dtype=t.dtype).view(-1, *([1] * (t.dim() - 1)))


def taylor1(d0: Value, d1: Value, offset: torch.Tensor) -> Value:
    """Δ⁰ + k·Δ¹ with k = `offset` per row."""
    return map_value(lambda a, b: a + _per_row(b, offset) * b, d0, d1)


class _VerifyHook(ModuleHook):
    """Forecast hook that also recomputes the image MLP of `verify_block` on a token subset and
    records each row's (|forecast - recomputed|, |recomputed|) sums."""

    def __init__(self, index, provide, verify_block: int, sums: list[torch.Tensor]):
        super().__init__(index, provide)
        self.verify_block, self.sums = verify_block, sums

    def mlp(self, block, stream, x):
        out = super().mlp(block, stream, x)
        if self.index == self.verify_block and stream == "img":
            tokens = slice(0, None, TOKEN_STRIDE)
            self.work += self.cost.img_mlp * len(range(x.shape[1])[tokens]) / x.shape[1]
            real = block.img_mlp(x[:, tokens])
            diff = (out[:, tokens] - real).abs().flatten(1).sum(1)
            self.sums += [diff, real.abs().flatten(1).sum(1)]
        return out


class SpeCa(CachePolicy):
    name = "speca"

    def __init__(self, interval: int, tau: float):
        self.interval, self.tau = interval, tau
        self.checks: list[tuple[int, int, float, bool]] = []
        """(step, prompt, verification error, accepted) of every checked forecast since the
        policy was built (kept across runs: a log, not cache state)."""
        self.reset()

    def reset(self) -> None:
        self.factors: dict[str, dict[Key, list[Value]]] = {}
        """Per CFG branch, per module: [Δ⁰, Δ¹] over all N prompts' rows."""
        self.last: dict[str, torch.Tensor] = {}
        """Per CFG branch: (N,) step of each prompt's last full evaluation (-1: none yet)."""

    def __call__(self, run: StepRun) -> torch.Tensor:
        n, branches = run.rows, run.branches
        for b in branches:
            self.last.setdefault(b, torch.full((n,), -1, dtype=torch.long))
        since = torch.stack([run.step - self.last[b] for b in branches]).max(0).values
        unknown = torch.stack([self.last[b] < 0 for b in branches]).any(0)
        forced = unknown | (since >= self.interval) | (run.step < WARMUP_STEPS)
        candidates = [s for s in range(n) if not forced[s]]
        recompute = [s for s in range(n) if forced[s]]
        parts = []
        if candidates:
            image, errors = self._forecast(run, candidates)
            accepted = []
            for s, e in zip(candidates, errors.tolist(), strict=True):
                self.checks.append((run.step, s, e, e < self.tau))
                if e < self.tau:
                    accepted.append(s)
            recompute = sorted(recompute + [s for s in candidates if s not in accepted])
            if accepted:
                keep = [candidates.index(s) for s in accepted]
                rows = sample_rows(run, accepted)
                parts.append((rows, image[sample_rows_local(len(candidates), keep, branches)]))
        if recompute:
            parts.append((sample_rows(run, recompute), self._compute(run, recompute)))
        run.kind = "full" if len(recompute) == n else "partial"
        return run.head(merge_rows(parts, run.batch))

    def _forecast(self, run: StepRun, samples: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Image hidden state of prompts `samples` with every module forecast, and each prompt's
        verification error (len(samples),)."""
        model = run.model
        if not len(model.double_blocks):
            raise UsageError("speca verifies on a double-stream block's MLP; this DiT has none")
        sub, index = sub_run(run, samples), torch.tensor(samples)
        offsets = {b: run.step - self.last[b][index] for b in run.branches}

        def provide(key: Key, compute) -> Value:
            return cat_rows(
                [
                    taylor1(*(_take(f, index) for f in self.factors[b][key]), offsets[b])
                    for b in run.branches
                ]
            )

        sums: list[torch.Tensor] = []
        verify = len(model.double_blocks) - 1
        image = sub.compute(lambda i: _VerifyHook(i, provide, verify, sums))
        charge(run, sub)
        diff, ref = (s.view(len(run.branches), len(samples)).sum(0) for s in sums)
        return image, diff / ref.clamp_min(1e-12)

    def _compute(self, run: StepRun, samples: list[int]) -> torch.Tensor:
        """The full DiT on prompts `samples`, updating their factors and clocks."""
        sub, index = sub_run(run, samples), torch.tensor(samples)
        gaps = {b: run.step - self.last[b][index] for b in run.branches}
        seen = {b: self.last[b][index] >= 0 for b in run.branches}

        def provide(key: Key, compute) -> Value:
            value = compute()
            for i, b in enumerate(run.branches):
                chunk = branch_rows(value, i, len(samples))
                table = self.factors.setdefault(b, {})
                if key not in table:
                    table[key] = [_widen(chunk, run.rows), _widen(chunk, run.rows)]
                d0, d1 = table[key]
                # Δ¹ only where the prompt has an earlier full step of this branch
                seen_b, gap_b = seen[b], gaps[b]
                slope = map_value(
                    lambda v, old, seen_b=seen_b, gap_b=gap_b: torch.where(
                        _per_row(v, seen_b).bool(), (v - old[index]) / _per_row(v, gap_b), 0
                    ),
                    chunk,
                    d0,
                )
                _write(d1, index, slope)
                _write(d0, index, chunk)
            return value

        image = sub.compute(lambda i: ModuleHook(i, provide))
        charge(run, sub)
        for b in run.branches:
            self.last[b][index] = run.step
        return image


def sample_rows_local(count: int, keep: Sequence[int], branches: Sequence[str]) -> torch.Tensor:
    """Rows of prompts `keep` (positions among `count`) in a branch-major sub-batch."""
    return torch.tensor([b * count + s for b in range(len(branches)) for s in keep])


def _widen(chunk: Value, rows: int) -> Value:
    """A zero table of `rows` prompts shaped like one branch's module output."""
    return map_value(lambda t: t.new_zeros((rows, *t.shape[1:])), chunk)


def _take(table: Value, index: torch.Tensor) -> Value:
    return map_value(lambda t: t[index], table)


def _write(table: Value, index: torch.Tensor, values: Value) -> None:
    if isinstance(table, tuple):
        for t, v in zip(table, values, strict=True):
            t[index] = v
    else:
        table[index] = values
