"""The cost axis of `vidcli benchmark --caching` for rows without a cache (solvers, leaps, token
merging, sparse attention): each DiT evaluation's FLOPs as a fraction of a dense one's.

Cached rows get the same count from their hooks (`CacheStats.blocks_computed`, parts weighted by
`vidcli.sampling.cache.cost.BlockCost`); here whole evaluations are charged by the attention path
the run's attention plan takes at that step: linear layers always see every token, while attention's
core runs over merged frame pairs (TDTM: a quarter of the image pairs) or the kept blocks of a
sparse pattern, plus the dense pass of a residual refresh.
"""

from __future__ import annotations

import functools

import torch

from vidcli.flow import ModelFn, SamplingHooks, StepInfo
from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.sampling.cache.cost import BlockCost
from vidcli_kernels.sparse_attention import VideoLayout, block_sparsity, choose_path
from vidcli_kernels.video_attention import VideoAttentionConfig, VideoAttentionPlan


class CostMeter(SamplingHooks):
    """A `model_fn` wrapper that is also the loop's hooks: `evaluations` adds up each call's cost
    in dense-evaluation equivalents (a plain call counts 1)."""

    def __init__(
        self,
        fn: ModelFn,
        config: MMDiTConfig,
        attention: VideoAttentionConfig | None,
        grid: tuple[int, int, int],
        device: str,
    ):
        self.fn, self.config, self.grid, self.device = fn, config, grid, device
        # A twin of the run's plan: the same config and steps give the same mode per evaluation.
        self.plan = VideoAttentionPlan(attention, grid) if attention is not None else None
        self.evaluations = 0.0

    def before_evaluation(self, info: StepInfo) -> None:
        if self.plan is not None:
            self.plan.begin_evaluation(info.step)

    def __call__(self, latents: torch.Tensor, timesteps: torch.Tensor, txt: torch.Tensor, *rest):
        mode = "dense" if self.plan is None else self.plan.mode
        self.evaluations += self.evaluation_cost(txt.shape[1], mode)
        return self.fn(latents, timesteps, txt, *rest)

    @functools.cache  # noqa: B019 - one meter per row, a handful of (text, mode) keys
    def evaluation_cost(self, text_tokens: int, mode: str) -> float:
        """One evaluation's FLOPs over a dense one's: 1 - core + core · (core work / dense)."""
        T, H, W = self.grid
        cfg = self.config
        core = BlockCost.of(cfg.hidden_size, cfg.mlp_hidden_dim, text_tokens, T * H * W)
        return 1.0 - core.attention_core + core.attention_core * self._core_work(text_tokens, mode)

    def _core_work(self, text_tokens: int, mode: str) -> float:
        """Attention-core pairs computed over the dense L², for one attention plan mode."""
        T, H, W = self.grid
        tokens = text_tokens + T * H * W
        if mode == "dense":
            return 1.0
        if mode == "merged":  # frame pairs averaged (a last odd frame dropped), then attended
            return ((text_tokens + T // 2 * H * W) / tokens) ** 2
        layout = VideoLayout(text_tokens, T, H, W)
        pattern = self.plan.config.pattern
        # The dispatcher decides from the shapes and the device alone, so a 1-wide probe will do.
        probe = torch.empty(1, 1, tokens, 1, device=self.device)
        path = choose_path(probe, pattern, layout, force=self.plan.config.force_sparse).path
        if path == "dense":
            return 1.0
        # flex skips whole blocks; SDPA with a mask still computes every pair.
        sparse = 1.0 - block_sparsity(pattern, layout) if path == "flex" else 1.0
        return sparse if mode == "sparse" else 1.0 + sparse  # full+residual: dense and sparse
