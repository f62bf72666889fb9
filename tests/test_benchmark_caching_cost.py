"""The caching benchmark's cost axis: FLOPs with attention's quadratic part, for cached calls
(per-part block shares) and uncached ones (token merging, sparse attention)."""

from __future__ import annotations

import pytest
import torch

from vidcli.benchmark.caching_cost import CostMeter
from vidcli.flow import StepInfo
from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.models.mmdit.model import MMDiT, dit_flops
from vidcli.sampling.cache import CachedDiT
from vidcli.sampling.cache.cost import BlockCost
from vidcli.sampling.cache.ditfastattn import DiTFastAttn
from vidcli_kernels.sparse_attention import SparsePattern
from vidcli_kernels.video_attention import VideoAttentionConfig

CFG = MMDiTConfig(
    in_channels=16, vec_in_dim=8, context_in_dim=12, hidden_size=32, num_heads=2, depth=2,
    depth_single_blocks=2, axes_dim=(4, 6, 6), fused_qkv=False,
)  # fmt: skip


def _info(step: int) -> StepInfo:
    return StepInfo(step, 10, 1.0, False, step, ("cond",), 1)


def test_block_shares_add_up_and_match_the_model_flops():
    cost = BlockCost.of(64, 256, 20, 4096)
    double = cost.double_attention + cost.img_mlp + cost.txt_mlp
    single = cost.single_qkv + cost.attention_core + cost.single_mlp_in + cost.single_merge
    assert double == pytest.approx(1.0) and single == pytest.approx(1.0)
    # The core's share is the quadratic term of MMDiT.forward_flops (4·D·L² of 2·P·L + 4·D·L²).
    cfg = MMDiTConfig(
        hidden_size=64, num_heads=1, depth=1, depth_single_blocks=1, axes_dim=(16, 24, 24)
    )
    flops = dit_flops(cfg, 4096, 20)
    assert cost.attention_core == pytest.approx(4 * 64 * 4116**2 * 2 / flops)
    # At video lengths attention is most of a block: skipping it saves far more than 1/3.
    assert cost.double_attention > 0.9


def test_skipped_attention_is_charged_its_quadratic_part():
    torch.manual_seed(0)
    model = MMDiT(CFG).eval()
    # Zero losses and a huge δ: every layer shares its attention across steps after step 0 (AST).
    policy = DiTFastAttn(1e9, [[[0.0, 0.0]] * 4] * 2)
    runner = CachedDiT(model, policy, 2)
    latents, txt = torch.randn(1, 4, 2, 8, 8), torch.randn(1, 5, 12)
    with torch.no_grad():
        for _ in range(2):
            runner(latents, torch.full((1,), 0.5), txt, torch.randn(1, 8))
    cost = BlockCost.of(32, CFG.mlp_hidden_dim, 5, 2 * 4 * 4)
    # Step 0 computes all 4 blocks; step 1 only the MLPs and single-block linear2.
    step1 = 2 * (1 - cost.double_attention) + 2 * (cost.single_mlp_in + cost.single_merge)
    assert runner.stats.kinds == ["full", "partial"]
    assert runner.stats.blocks_computed == pytest.approx(4 + step1)


def _meter(attention, grid):
    calls = []
    meter = CostMeter(lambda *args: calls.append(args), CFG, attention, grid, "cpu")
    return meter, calls


def test_merged_frames_are_charged_a_quarter_of_the_image_pairs():
    grid, text = (4, 4, 4), 8
    meter, calls = _meter(VideoAttentionConfig(merge_steps=2), grid)
    txt = torch.zeros(1, text, 12)
    for step in range(4):
        meter.before_evaluation(_info(step))
        meter(torch.zeros(1), torch.zeros(1), txt)
    assert len(calls) == 4
    core = BlockCost.of(32, CFG.mlp_hidden_dim, text, 64).attention_core
    merged = 1 - core + core * ((text + 2 * 16) / (text + 64)) ** 2
    assert meter.evaluations == pytest.approx(2 * merged + 2)
    assert merged < 1


def test_uncached_rows_without_a_plan_count_dense_calls():
    meter, _ = _meter(None, (2, 4, 4))
    for step in range(28):
        meter.before_evaluation(_info(step))
        meter(torch.zeros(1), torch.zeros(1), torch.zeros(1, 5, 12))
    assert meter.evaluations == pytest.approx(28)


def test_sparse_steps_are_charged_their_kept_blocks():
    pattern = SparsePattern("window", window=(0, 2, 2))
    config = VideoAttentionConfig(pattern=pattern, dense_steps=1, full_every=2, force_sparse=True)
    meter, _ = _meter(config, (4, 16, 16))
    txt = torch.zeros(1, 8, 12)
    costs = []
    for step in range(3):  # full+residual (seeds the residual), sparse, full+residual
        meter.before_evaluation(_info(step))
        before = meter.evaluations
        meter(torch.zeros(1), torch.zeros(1), txt)
        costs.append(meter.evaluations - before)
    assert costs[1] < 1.0 < costs[0]
    assert costs[2] == pytest.approx(costs[0])
    # full+residual computes the dense core and the sparse one, a sparse step the sparse one alone.
    core = BlockCost.of(32, CFG.mlp_hidden_dim, 8, 4 * 16 * 16).attention_core
    assert costs[0] - costs[1] == pytest.approx(core)
