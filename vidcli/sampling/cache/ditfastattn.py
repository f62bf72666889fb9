"""DiTFastAttn (Yuan et al., NeurIPS'24, arXiv 2406.08552), its two step/branch techniques:
AST (attention sharing across timesteps: a layer reuses its attention output from the last step it
computed it) and ASC (attention sharing across CFG: only the conditional rows attend and the other
branches take their output). Window attention with residual sharing (WA-RS) is not included: it
needs a sliding-window attention kernel over the joint sequence.

Plan (paper §3.5, Alg. 1): per step and layer, the first candidate in [AST, ASC] whose output loss
L(O, O') = mean clip(|O - O'| / (max(|O|, |O'|) + 1e-6), 0, 10) stays below (i/L)·δ. Deviation,
for one calibration per step count instead of one per δ: the losses are measured with one layer
compressed at a time along the uncached trajectory (`calibration.record_ditfastattn`), and a plan
charges each layer the losses of the earlier layers chosen at that step (additive approximation of
the paper's sequential greedy). Step 0 is always full. "attention output" is the double block's
joint attention after `proj` and the single block's attention before linear2 (whose MLP half is
always computed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import ComputeHook, StepRun, put_rows, take_rows

FULL, AST, ASC = "full", "ast", "asc"
CANDIDATES = (AST, ASC)


def output_loss(o: torch.Tensor, o2: torch.Tensor) -> float:
    """The paper's relative loss (App. A.2), with absolute values in the max as the paper writes."""
    rel = (o - o2).abs() / (torch.maximum(o.abs(), o2.abs()) + 1e-6)
    return rel.clamp(0, 10).mean().item()


def plan(losses: Sequence[Sequence[Sequence[float]]], delta: float) -> list[list[str]]:
    """losses[n][i][c] -> the technique per step n and layer i (step 0 always full)."""
    result = []
    for n, per_layer in enumerate(losses):
        layers = len(per_layer)
        spent, row = 0.0, []
        for i, per_candidate in enumerate(per_layer):
            choice = FULL
            if n > 0:
                for c, name in enumerate(CANDIDATES):
                    if spent + per_candidate[c] < (i + 1) / layers * delta:
                        choice, spent = name, spent + per_candidate[c]
                        break
            row.append(choice)
        result.append(row)
    return result


class AttentionHook(ComputeHook):
    """Runs one layer's attention as full, AST (cached) or ASC (conditional rows only)."""

    def __init__(self, index: int, technique: str, cache: dict, rows: int):
        super().__init__()
        self.index, self.technique, self.cache, self.rows = index, technique, cache, rows

    def _cached(self, batch: int):
        """This layer's attention from the last step that computed it, or None."""
        value = self.cache.get(self.index)
        return None if value is None else take_rows(value, batch)

    def _store(self, value) -> None:
        self.cache[self.index] = put_rows(self.cache.get(self.index), value)

    def _share(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        return t.repeat(batch // self.rows, *([1] * (t.ndim - 1)))

    def attention(self, block, img_in, txt_in, cos, sin):
        batch, n = img_in.shape[0], self.rows
        cached = self._cached(batch)
        if self.technique == AST and cached is not None:
            return cached
        if self.technique == ASC and batch > n:
            self.work += self.cost.double_attention * n / batch
            img, txt = block.attention(img_in[:n], txt_in[:n], cos[:n], sin[:n])
            out = (self._share(img, batch), self._share(txt, batch))
        else:
            self.work += self.cost.double_attention
            out = block.attention(img_in, txt_in, cos, sin)
        self._store(out)
        return out

    def single(self, block, x_mod, cos, sin):
        self.work += self.cost.single_mlp_in + self.cost.single_merge
        batch, n = x_mod.shape[0], self.rows
        cached = self._cached(batch)
        if self.technique == AST and cached is not None:
            return block.merge(cached, block.mlp_input(x_mod))
        q, k, v, mlp = block.project(x_mod)
        self.work += self.cost.single_qkv
        if self.technique == ASC and batch > n:
            self.work += self.cost.attention_core * n / batch
            attn = self._share(block.attend(q[:n], k[:n], v[:n], cos[:n], sin[:n]), batch)
        else:
            self.work += self.cost.attention_core
            attn = block.attend(q, k, v, cos, sin)
        self._store(attn)
        return block.merge(attn, mlp)


class DiTFastAttn(CachePolicy):
    name = "ditfastattn"

    def __init__(self, delta: float, losses: Sequence[Sequence[Sequence[float]]]):
        self.delta = delta
        self.plan = plan(losses, delta)
        self.reset()

    def reset(self) -> None:
        self.cache: dict = {}

    def __call__(self, run: StepRun) -> torch.Tensor:
        row = self.plan[run.step]
        if any(t != FULL for t in row):
            run.kind = "partial"

        # Full layers still go through the hook: their outputs fill the cache for later steps.
        def hook_for(i: int) -> AttentionHook:
            return AttentionHook(i, row[i], self.cache, run.rows)

        return run.head(run.compute(hook_for))
