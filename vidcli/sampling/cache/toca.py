"""ToCa, token-wise feature caching (Zou et al., ICLR'25, arXiv 2410.05317).

Full steps compute everything and cache, per block, the attention output and the MLP outputs (and
each token's module input). Between them ("ToCa steps") attention is reused whole and only the
tokens scored most in need are recomputed, in the MLPs of double blocks and in the MLP + linear2
of single blocks (which reuse those tokens' cached attention rows), then scattered into the cache;
everything is re-gated with the current conditioning. As ToCa-FLUX (shared/reference/
caching-methods.md §3): steps 0-2 full, then one full step every K; ratio R = R0·(1.5 - ℓ/27)·
(0.4 double | 1.6 single) for block ℓ of its stream, R0 = 0.1, clamped to [0, 1]. The 27 is the
code's constant, not a stream's depth (FLUX has 19 double and 38 single blocks), so a shallow
model recomputes about 1.5·R0·(0.4 | 1.6) of its tokens in every block.

Score: ToCa's attention-map score needs materialised attention maps (no fused kernels), so we use
its "similarity" score instead — 1 - cosine(token's module input now, at its last refresh),
L2-normalised over tokens — plus the cache-frequency term 0.25·(steps since refresh)/K.
Every row of the CFG batch picks its own tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vidcli.sampling.cache.base import CachePolicy, periodic_full_step
from vidcli.sampling.cache.hooks import ComputeHook, StepRun, put_rows, take_rows

WARMUP_STEPS = 3
BASE_RATIO = 0.1
FRESHNESS_WEIGHT = 0.25
LAYER_SCALE = 27
"""ToCa-FLUX's layer divisor (`fresh_ratio_scheduler.py`, schedule 'ToCa')."""


def fresh_ratio(index: int, depth: int) -> float:
    """R for block `index` (0..depth-1 double, then single), clamped to [0, 1]."""
    if index < depth:
        r = BASE_RATIO * (1.5 - index / LAYER_SCALE) * 0.4
    else:
        r = BASE_RATIO * (1.5 - (index - depth) / LAYER_SCALE) * 1.6
    return min(max(r, 0.0), 1.0)


class TokenCache:
    """One module's cached output, input and per-token age."""

    def __init__(self, output: torch.Tensor, inputs: torch.Tensor):
        self.output, self.inputs = output, inputs
        self.age = torch.zeros(inputs.shape[:2], device=inputs.device)

    def select(self, inputs: torch.Tensor, ratio: float, interval: int) -> torch.Tensor:
        """Indices (B, k) of the tokens to recompute."""
        k = max(1, round(ratio * inputs.shape[1]))
        B = inputs.shape[0]
        change = 1 - F.cosine_similarity(inputs.float(), self.inputs[:B].float(), dim=-1)
        score = F.normalize(change, dim=1) + FRESHNESS_WEIGHT * self.age[:B] / interval
        return score.topk(k, dim=1).indices

    def refresh(self, idx: torch.Tensor, inputs: torch.Tensor, values: torch.Tensor) -> None:
        """Scatter recomputed tokens into the leading rows (this call's layout), age the others."""
        B = idx.shape[0]
        age = self.age[:B] + 1
        self.age = put_rows(self.age, age.scatter(1, idx, 0.0))
        self.output = put_rows(self.output, _scatter(self.output[:B], idx, values))
        self.inputs = put_rows(self.inputs, _scatter(self.inputs[:B], idx, _gather(inputs, idx)))


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def _scatter(t: torch.Tensor, idx: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return t.scatter(1, idx[..., None].expand(-1, -1, t.shape[-1]), values)


class ToCaHook(ComputeHook):
    """One block's view: record on full steps, partial recomputation on ToCa steps."""

    def __init__(self, policy: ToCa, index: int, ratio: float, full: bool):
        super().__init__()
        self.policy, self.index, self.ratio, self.full = policy, index, ratio, full

    def attention(self, block, img_in, txt_in, cos, sin):
        key, attn = (self.index, "attn"), self.policy.attn
        if self.full or key not in attn:
            value = super().attention(block, img_in, txt_in, cos, sin)
            attn[key] = put_rows(attn.get(key), value)
            return value
        return take_rows(attn[key], img_in.shape[0])

    def mlp(self, block, stream, x):
        module = getattr(block, f"{stream}_mlp")
        key = (self.index, stream)
        cache = self.policy.tokens.get(key)
        if self.full or cache is None:
            out = super().mlp(block, stream, x)
            self.policy.store(key, out, x)
            return out
        idx = cache.select(x, self.ratio, self.policy.interval)
        self.work += getattr(self.cost, f"{stream}_mlp") * idx.shape[1] / x.shape[1]
        cache.refresh(idx, x, module(_gather(x, idx)))
        return cache.output[: x.shape[0]]

    def single(self, block, x_mod, cos, sin):
        key = (self.index, "single")
        cache = self.policy.tokens.get(key)
        if self.full or cache is None:
            self.work += 1.0
            q, k, v, mlp = block.project(x_mod)
            attn = block.attend(q, k, v, cos, sin)
            out = block.merge(attn, mlp)
            self.policy.store(key, out, x_mod)
            attn_key = (self.index, "attn")
            self.policy.attn[attn_key] = put_rows(self.policy.attn.get(attn_key), attn)
            return out
        idx = cache.select(x_mod, self.ratio, self.policy.interval)
        share = self.cost.single_mlp_in + self.cost.single_merge
        self.work += share * idx.shape[1] / x_mod.shape[1]
        attn = _gather(self.policy.attn[(self.index, "attn")][: x_mod.shape[0]], idx)
        values = block.merge(attn, block.mlp_input(_gather(x_mod, idx)))
        cache.refresh(idx, x_mod, values)
        return cache.output[: x_mod.shape[0]]


class ToCa(CachePolicy):
    name = "toca"

    def __init__(self, interval: int):
        self.interval = interval
        self.reset()

    def reset(self) -> None:
        self.attn: dict = {}
        self.tokens: dict[tuple[int, str], TokenCache] = {}

    def store(self, key: tuple[int, str], output: torch.Tensor, inputs: torch.Tensor) -> None:
        """A full step's module output and input, over the leading rows of the cache."""
        old = self.tokens.get(key)
        if old is None:
            self.tokens[key] = TokenCache(output, inputs)
            return
        old.output, old.inputs = put_rows(old.output, output), put_rows(old.inputs, inputs)
        old.age = put_rows(old.age, torch.zeros_like(old.age[: inputs.shape[0]]))

    def __call__(self, run: StepRun) -> torch.Tensor:
        full = not self.tokens or periodic_full_step(run.step, self.interval, WARMUP_STEPS)
        depth = len(run.model.double_blocks)
        if not full:
            run.kind = "partial"

        def hook_for(i: int) -> ToCaHook:
            return ToCaHook(self, i, fresh_ratio(i, depth), full)

        return run.head(run.compute(hook_for))
