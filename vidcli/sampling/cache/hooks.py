"""How a caching policy reaches inside the MMDiT: per-step state and per-block hooks.

A policy never edits the model. Each model call, `CachedDiT` embeds the inputs once
(`MMDiT.embed`) and hands the policy a `StepRun`: the embedded tokens, the step index, the CFG
layout and `run_blocks`, which runs any range of blocks with optional hooks. A block given a hook
asks it for its attention and MLP outputs (double blocks) or its pre-gate output (single blocks);
`ComputeHook` computes them exactly as the block's own forward does, so a policy that decides to
compute everything reproduces the uncached model bit for bit.

Shapes: B = rows of the model call (CFG branches x N prompts), L_img / L_txt tokens, D width.
Blocks are numbered 0..depth-1 (double-stream) then depth.. (single-stream).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch

from vidcli.models.mmdit.hooks import BlockHook
from vidcli.models.mmdit.model import Embedded
from vidcli.sampling.cache.cost import BlockCost


class ComputeHook(BlockHook):
    """A block hook that computes everything, exactly as the block's forward would.

    Policies subclass it and override what they reuse; `work` accumulates the block-equivalents
    actually computed (1.0 for a whole block), each part weighted by its FLOPs in `cost`.
    """

    cost: BlockCost
    """This call's FLOP shares, set by `StepRun.run_blocks` before the block runs."""

    def __init__(self) -> None:
        self.work = 0.0

    def attention(self, block, img_in, txt_in, cos, sin):
        """Double block: (img (B, L_img, D), txt (B, L_txt, D)) after `proj`, before the gate."""
        self.work += self.cost.double_attention
        return block.attention(img_in, txt_in, cos, sin)

    def mlp(self, block, stream: str, x: torch.Tensor) -> torch.Tensor:
        """Double block: the "img" or "txt" MLP of its modulated input, before the gate."""
        self.work += getattr(self.cost, f"{stream}_mlp")
        return getattr(block, f"{stream}_mlp")(x)

    def single(self, block, x_mod, cos, sin) -> torch.Tensor:
        """Single block: linear2([attention; GELU(MLP)]) of the modulated input, before the gate."""
        self.work += 1.0
        return single_output(block, x_mod, cos, sin)


def single_output(block, x_mod, cos, sin) -> torch.Tensor:
    """A single block's pre-gate output, computed as its forward does: (B, L, D) -> (B, L, D)."""
    q, k, v, mlp = block.project(x_mod)
    return block.merge(block.attend(q, k, v, cos, sin), mlp)


HookFor = Callable[[int], ComputeHook | None]
"""Block index -> the hook that block runs with (None = the block's plain forward)."""


@dataclass
class Trunk:
    """The hidden state between blocks: separate streams, then one [text; image] sequence."""

    x: torch.Tensor
    """(B, L_img, D) image stream (stale once `h` is set)."""
    ctx: torch.Tensor
    """(B, L_txt, D) text stream (stale once `h` is set)."""
    h: torch.Tensor | None = None
    """(B, L_txt + L_img, D) once the single-stream blocks have started."""

    @property
    def image(self) -> torch.Tensor:
        """(B, L_img, D) the image tokens of the current state."""
        return self.x if self.h is None else self.h[:, self.ctx.shape[1] :]

    def with_image(self, image: torch.Tensor) -> Trunk:
        """The same state with its image tokens replaced."""
        if self.h is None:
            return Trunk(image, self.ctx)
        return Trunk(image, self.ctx, torch.cat((self.h[:, : self.ctx.shape[1]], image), dim=1))


@dataclass
class StepRun:
    """One model call as a policy sees it."""

    model: torch.nn.Module
    embedded: Embedded
    step: int
    """Sampling step, 0 = the noisiest."""
    num_steps: int
    rows: int
    """Prompts per CFG branch (N); the call has B = branches·N rows, the first N conditional."""
    branches: tuple[str, ...] = ("cond",)
    """The CFG layout of this call, N rows per branch (`flow.StepInfo.branches`)."""
    work: float = 0.0
    """Block-equivalents computed in this call (filled by `run_blocks`)."""
    kind: str = "full"
    """"full", "partial" or "skipped": set by the policy."""
    captured: dict[int, torch.Tensor] = field(default_factory=dict)

    @cached_property
    def cost(self) -> BlockCost:
        """The FLOP shares of one block's parts at this call's token counts."""
        cfg = self.model.config
        return BlockCost.of(
            cfg.hidden_size,
            cfg.mlp_hidden_dim,
            self.embedded.ctx.shape[1],
            self.embedded.x.shape[1],
        )

    @property
    def num_blocks(self) -> int:
        return len(self.model.double_blocks) + len(self.model.single_blocks)

    @property
    def batch(self) -> int:
        """B, the rows of this call."""
        return self.embedded.x.shape[0]

    @property
    def last(self) -> bool:
        return self.step == self.num_steps - 1

    def start(self) -> Trunk:
        return Trunk(self.embedded.x, self.embedded.ctx)

    def run_blocks(
        self,
        trunk: Trunk,
        start: int = 0,
        stop: int | None = None,
        hook_for: HookFor | None = None,
        capture: tuple[int, ...] = (),
    ) -> Trunk:
        """Run blocks start..stop-1 on `trunk`; `capture` keeps those blocks' image residuals
        (output - input, (B, L_img, D)) in `captured`."""
        m, e = self.model, self.embedded
        depth = len(m.double_blocks)
        stop = self.num_blocks if stop is None else stop
        x, ctx, h = trunk.x, trunk.ctx, trunk.h
        for i in range(start, stop):
            hook = hook_for(i) if hook_for is not None else None
            if hook is not None:
                hook.cost = self.cost
            before = (x if h is None else h[:, ctx.shape[1] :]) if i in capture else None
            if i < depth:
                x, ctx = m.double_blocks[i](x, ctx, e.vec, e.cos, e.sin, hook)
            else:
                if h is None:
                    h = torch.cat((ctx, x), dim=1)
                h = m.single_blocks[i - depth](h, e.vec, e.cos, e.sin, hook)
            self.work += 1.0 if hook is None else hook.work
            if hook is not None:
                hook.work = 0.0
            if before is not None:
                after = x if h is None else h[:, ctx.shape[1] :]
                self.captured[i] = after - before
        return Trunk(x, ctx, h)

    def head(self, image: torch.Tensor) -> torch.Tensor:
        """Final adaLN + projection: (B, L_img, D) -> velocity tokens (B, L_img, C·p²)."""
        return self.model.head(image, self.embedded.vec)

    def relative_l1(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """`relative_l1` of two (B, L, D) states of this call, over the whole sequence.

        Under sequence parallelism each rank holds a shard: the two sums run over this rank's
        real tokens (pads out, replicated text counted on one rank) and are all-reduced, so every
        rank of the group takes the same compute-or-reuse decision.
        """
        sp = self.model.sequence_parallel
        if sp is None:
            return relative_l1(a, b)
        weight = sp.token_weights(a.shape[1], a.device)[None, :, None]
        sums = torch.stack(((a - b).abs().mul(weight).sum(), b.abs().mul(weight).sum()))
        diff, total = sp.all_reduce_sum(sums.double()).tolist()
        return diff / max(total, 1e-12)

    def compute(self, hook_for: HookFor | None = None) -> torch.Tensor:
        """The whole DiT: image hidden state after the last block, (B, L_img, D)."""
        return self.run_blocks(self.start(), hook_for=hook_for).image


def take_rows(value, rows: int):
    """The first `rows` rows of a cached tensor, tuple or list of them.

    The loop's CFG layouts are prefixes of one another (("cond",) of ("cond", "uncond") of
    ("cond", "uncond", "uncond_noimg")), so a cache written with more branches serves a call
    with fewer by its leading rows.
    """
    if isinstance(value, tuple | list):
        return type(value)(take_rows(v, rows) for v in value)
    return value[:rows]


def put_rows(old, new):
    """`new` written over the leading rows of `old`: rows of branches absent from this call keep
    their older values (None old = new)."""
    if old is None:
        return new
    if isinstance(new, tuple | list):
        return type(new)(put_rows(o, n) for o, n in zip(old, new, strict=True))
    if new.shape[0] >= old.shape[0]:
        return new
    return torch.cat((new, old[new.shape[0] :]))


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """mean|a - b| / mean|b| over the whole tensor (batch included), as the papers compute it."""
    return ((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12)).item()
