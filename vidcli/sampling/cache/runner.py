"""`CachedDiT`: the one caching mechanism of the sampling loop, a drop-in `model_fn`.

It has `MMDiT.forward_video`'s signature, so `flow.sample_*` call it like the model, and it is the
loop's `flow.SamplingHooks`: `before_evaluation` tells it the step and the CFG layout of the next
call. The policy decides what to compute; the runner counts full, partial and skipped evaluations
and the block-equivalents computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidcli.flow import SamplingHooks, StepInfo
from vidcli.models.mmdit.packing import unpack_latents
from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.hooks import StepRun


@dataclass
class CacheStats:
    """What a sampling run computed; `blocks_*` count block-equivalents over all evaluations."""

    full_evals: int = 0
    partial_evals: int = 0
    skipped_evals: int = 0
    blocks_computed: float = 0.0
    blocks_total: int = 0
    kinds: list[str] = field(default_factory=list)
    """The kind of each evaluation, in order."""

    def add(self, run: StepRun) -> None:
        self.kinds.append(run.kind)
        setattr(self, f"{run.kind}_evals", getattr(self, f"{run.kind}_evals") + 1)
        self.blocks_computed += run.work
        self.blocks_total += run.num_blocks


class CachedDiT(SamplingHooks):
    """Wraps an MMDiT and a policy: pass it as the loop's `model_fn` and as its `hooks`.

    A solver with several evaluations per step (rf2) makes several evaluation streams: one at the
    schedule's times, one at the midpoints. Each stream has its own copy of the policy
    (`CachePolicy.fork`), so a cache never mixes a midpoint with its step's first evaluation
    (a step gap of 0) and step-indexed tables see each step once per stream.
    """

    def __init__(self, model: torch.nn.Module, policy: CachePolicy, num_steps: int):
        self.model, self.policy, self.num_steps = model, policy, num_steps
        self.midpoint_policy = policy.fork()
        self.stats = CacheStats()
        self._info: StepInfo | None = None
        self._calls = 0

    def before_evaluation(self, info: StepInfo) -> None:
        self._info = info

    def end_run(self) -> None:
        self.policy.reset()
        self.midpoint_policy.reset()

    def __call__(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        txt: torch.Tensor,
        y_vec: torch.Tensor,
        cond_latent: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity (B, C, T, H, W), as `MMDiT.forward_video`."""
        info, self._info = self._info, None
        if info is None:  # called without the loop's hooks: one branch, one call per step
            info = StepInfo(self._calls % self.num_steps, self.num_steps, 0.0, False, self._calls,
                            ("cond",), latents.shape[0])  # fmt: skip
        self._calls += 1
        if info.evaluation == 0:
            self.policy.reset()
            self.midpoint_policy.reset()
        m = self.model
        img, img_ids, txt_ids, cond = m.pack_video(latents, txt, cond_latent, cond_mask)
        embedded = m.embed(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        run = StepRun(m, embedded, info.step, info.num_steps, info.batch, info.branches)
        out = (self.midpoint_policy if info.midpoint else self.policy)(run)
        self.stats.add(run)
        return unpack_latents(out, m.config.patch_size, *latents.shape[2:])
