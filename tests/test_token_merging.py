"""Temporal Dimension Token Merging: merge/unmerge algebra, exactness on redundant frames, plan."""

from __future__ import annotations

import pytest
import torch

from vidcli_kernels.attention import attention, attention_reference, use_attention_plan
from vidcli_kernels.token_merging import merge_frames, merged_attention, unmerge_frames
from vidcli_kernels.video_attention import VideoAttentionConfig, VideoAttentionPlan

TEXT, PER_FRAME = 3, 6  # text tokens, image tokens per latent frame


def sequence(frames: int, paired: bool, seed: int = 0) -> torch.Tensor:
    """(1, 2, TEXT + frames·PER_FRAME, 8); with `paired`, frame 2j+1 equals frame 2j and a last odd
    frame equals the one before it."""
    g = torch.Generator().manual_seed(seed)
    txt = torch.randn(1, 2, TEXT, 8, generator=g)
    img = torch.randn(1, 2, frames, PER_FRAME, 8, generator=g)
    if paired:
        img = img[:, :, : (frames + 1) // 2].repeat_interleave(2, dim=2)[:, :, :frames]
        if frames % 2:
            img[:, :, -1] = img[:, :, -2]
    return torch.cat((txt, img.reshape(1, 2, frames * PER_FRAME, 8)), dim=2)


def test_merge_is_the_mean_of_frame_pairs_and_drops_a_last_odd_frame():
    x = sequence(5, paired=False)
    merged = merge_frames(x, TEXT, 5)
    assert merged.shape == (1, 2, TEXT + 2 * PER_FRAME, 8)
    img = x[:, :, TEXT:].reshape(1, 2, 5, PER_FRAME, 8)
    torch.testing.assert_close(
        merged[:, :, TEXT : TEXT + PER_FRAME], (img[:, :, 0] + img[:, :, 1]) / 2
    )
    torch.testing.assert_close(merged[:, :, TEXT + PER_FRAME :], (img[:, :, 2] + img[:, :, 3]) / 2)
    assert torch.equal(merged[:, :, :TEXT], x[:, :, :TEXT])


@pytest.mark.parametrize("frames", [2, 4, 5])
def test_unmerge_after_merge_is_the_identity_on_paired_frames(frames):
    x = sequence(frames, paired=True)
    assert torch.equal(unmerge_frames(merge_frames(x, TEXT, frames), TEXT, frames), x)
    # ... and only there
    y = sequence(frames, paired=False)
    assert not torch.allclose(unmerge_frames(merge_frames(y, TEXT, frames), TEXT, frames), y)


def test_merged_attention_is_exact_when_frame_pairs_are_identical():
    # With duplicated frames every key appears twice; the log 2 bias of a merged key accounts for
    # that, so merged attention equals full attention, text queries included.
    q, k, v = (sequence(4, paired=True, seed=s) for s in (1, 2, 3))
    full = attention_reference(q, k, v)
    torch.testing.assert_close(merged_attention(q, k, v, TEXT, 4), full, atol=1e-6, rtol=0)
    # without the bias the text rows would differ: the bias is what makes it exact
    qm, km, vm = (merge_frames(t, TEXT, 4) for t in (q, k, v))
    unbiased = unmerge_frames(attention_reference(qm, km, vm), TEXT, 4)
    assert (unbiased[:, :, :TEXT] - full[:, :, :TEXT]).abs().max() > 1e-3


def test_plan_merges_only_the_first_steps():
    plan = VideoAttentionPlan(VideoAttentionConfig(merge_steps=2), grid=(4, 1, PER_FRAME))
    q, k, v = (sequence(4, paired=False, seed=s) for s in (1, 2, 3))
    outs = []
    with use_attention_plan(plan):
        for step in range(3):
            plan.begin_evaluation(step)
            outs.append((plan.mode, attention(q, k, v)))
    assert [mode for mode, _ in outs] == ["merged", "merged", "dense"]
    torch.testing.assert_close(outs[0][1], merged_attention(q, k, v, TEXT, 4))
    torch.testing.assert_close(outs[2][1], attention_reference(q, k, v), atol=1e-5, rtol=0)
    assert plan.choices == {"merged": 2, "dense": 1}
