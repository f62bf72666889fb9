"""Sparse video attention: masks against closed-form references, paths against dense softmax."""

from __future__ import annotations

import itertools

import pytest
import torch

from vidcli_kernels import sparse_attention as sa
from vidcli_kernels.attention import attention, attention_reference, use_attention_plan
from vidcli_kernels.video_attention import VideoAttentionConfig, VideoAttentionPlan

LAYOUT = sa.VideoLayout(text=5, frames=4, height=4, width=16)
STA = sa.SparsePattern("sta", window=(1, 1, 3), tile=(2, 2, 4))
WINDOW = sa.SparsePattern("window", window=(1, 1, 2))
FRAME_TILE = sa.SparsePattern("frame_tile", global_frames=1)


def qkv(layout=LAYOUT, batch=2, heads=2, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, layout.tokens, dim, generator=g) for _ in range(3)]


def coords(layout):
    """(is_image, t, h, w) of every sequence position, text first, by plain Python."""
    out = [(False, 0, 0, 0)] * layout.text
    for t, h, w in itertools.product(
        range(layout.frames), range(layout.height), range(layout.width)
    ):
        out.append((True, t, h, w))
    return out


def loop_mask(layout, keep_image_pair):
    pos = coords(layout)
    rows = [[not (qi and ki) or keep_image_pair(a, b) for ki, *b in pos] for qi, *a in pos]
    return torch.tensor(rows)


def sta_pair(a, b, grid, tile, window):
    """STA (reference note §4): |clamp(tile_q, k//2, n-1-k//2) - tile_k| <= k//2 on every axis."""
    for x, y, n, s, k in zip(a, b, grid, tile, window, strict=True):
        centre = min(max(x // s, k // 2), n // s - 1 - k // 2)
        if abs(centre - y // s) > k // 2:
            return False
    return True


def test_tile_masks_equal_loop_references():
    grid = (LAYOUT.frames, LAYOUT.height, LAYOUT.width)
    sta = loop_mask(LAYOUT, lambda a, b: sta_pair(a, b, grid, STA.tile, STA.window))
    assert torch.equal(sa.dense_mask(STA, LAYOUT), sta)
    # Efficient-vDiT 1:(T-1): the diagonal frame blocks plus frame 0's rows and columns
    tile = loop_mask(LAYOUT, lambda a, b: a[0] == b[0] or a[0] < 1 or b[0] < 1)
    assert torch.equal(sa.dense_mask(FRAME_TILE, LAYOUT), tile)
    radius = WINDOW.window
    box = loop_mask(
        LAYOUT, lambda a, b: all(abs(x - y) <= r for x, y, r in zip(a, b, radius, strict=True))
    )
    assert torch.equal(sa.dense_mask(WINDOW, LAYOUT), box)
    # the STA window of an edge tile is pushed inward: tile (0, 0, 0) sees w-tiles 0..2 of 0..3
    row = sta[LAYOUT.text, LAYOUT.text :].reshape(4, 4, 16)[0, 0].tolist()
    assert row == [True] * 12 + [False] * 4
    assert 0.3 < sa.sparsity(STA, LAYOUT) < 0.9


def test_block_masks_match_the_token_mask_and_are_cached():
    layout = sa.VideoLayout(text=16, frames=4, height=8, width=16)  # 512 image tokens
    pattern = sa.SparsePattern("sta", window=(1, 1, 1), tile=(2, 4, 8))  # 64-token tiles
    bm = sa.block_mask(pattern, layout, "cpu")
    assert sa.block_mask(pattern, layout, "cpu") is bm
    # the block mask lives in tile-major order: map the token mask there, then to blocks
    order = sa.tile_major_order(pattern, layout)
    token = sa.dense_mask(pattern, layout)[order][:, order]
    size = sa.FLEX_BLOCK_SIZE
    n = -(-layout.tokens // size)
    padded = torch.zeros(n * size, n * size, dtype=torch.bool)
    padded[: layout.tokens, : layout.tokens] = token
    blocks = padded.reshape(n, size, n, size)
    assert torch.equal(bm.to_dense()[0, 0].bool(), blocks.any(dim=(1, 3)))
    # full blocks skip the mask: they must be kept on every real token pair (and hold no padding)
    padded[layout.tokens :] = True  # rows past the end do not exist
    full = torch.zeros(n, n, dtype=torch.bool)
    counts, indices = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
    for row, (count, idx) in enumerate(zip(counts, indices, strict=True)):
        full[row, idx[:count]] = True
    assert torch.equal(full, padded.reshape(n, size, n, size).all(dim=(1, 3)))
    assert sa.block_sparsity(pattern, layout) == pytest.approx(
        1 - blocks.any(dim=(1, 3)).float().mean().item()
    )


def test_window_covering_every_token_equals_dense_attention():
    q, k, v = qkv()
    everything = sa.SparsePattern("window", window=(LAYOUT.frames, LAYOUT.height, LAYOUT.width))
    mask = sa.dense_mask(everything, LAYOUT)
    assert mask.all()
    assert torch.equal(sa.sparse_attention_reference(q, k, v, mask), attention_reference(q, k, v))
    out = sa.sparse_attention(q, k, v, everything, LAYOUT, path="sdpa_mask")
    torch.testing.assert_close(out, attention_reference(q, k, v), atol=1e-6, rtol=0)


@pytest.mark.parametrize("pattern", [STA, WINDOW, FRAME_TILE], ids=lambda p: p.kind)
def test_sdpa_mask_path_equals_the_reference(pattern):
    q, k, v = qkv()
    ref = sa.sparse_attention_reference(q, k, v, sa.dense_mask(pattern, LAYOUT))
    out = sa.sparse_attention(q, k, v, pattern, LAYOUT, path="sdpa_mask")
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert (out - attention_reference(q, k, v)).abs().max() > 1e-3  # the mask does something


@pytest.mark.slow  # compiles FlexAttention's CPU kernel (about 40 s on 2 cores)
def test_flex_path_in_tile_major_order_equals_the_reference():
    q, k, v = qkv()
    ref = sa.sparse_attention_reference(q, k, v, sa.dense_mask(STA, LAYOUT))
    with torch.no_grad():
        out = sa.sparse_attention(q, k, v, STA, LAYOUT, path="flex")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_dispatcher_stays_dense_where_sparse_is_slower(monkeypatch):
    q = qkv()[0]
    choice = sa.choose_path(q, STA, LAYOUT)
    assert choice == ("dense", f"{LAYOUT.tokens} tokens < 8192 on cpu")
    monkeypatch.setitem(sa.SPARSE_MIN_TOKENS, "cpu", 16)
    # 261 tokens are 3 x 3 blocks of 128, too coarse for this pattern to skip half of them
    assert sa.choose_path(q, STA, LAYOUT).reason.endswith("% of blocks skipped < 50%")
    monkeypatch.setattr(sa, "SPARSE_MIN_BLOCK_SPARSITY", 0.0)
    with torch.no_grad():
        assert sa.choose_path(q, STA, LAYOUT).path == "flex"
    # no FlexAttention backward on CPU: dense, or the masked SDPA when the sparse result is needed
    q.requires_grad_(True)
    assert sa.choose_path(q, STA, LAYOUT).path == "dense"
    assert sa.choose_path(q, STA, LAYOUT, force=True).path == "sdpa_mask"
    odd = sa.SparsePattern("sta", tile=(3, 4, 4))
    assert sa.choose_path(q, odd, LAYOUT, force=True) == (
        "dense",
        "grid (4, 4, 16) is not divisible by the STA tile (3, 4, 4)",
    )


def test_window_residual_plan_reuses_full_minus_sparse(monkeypatch):
    monkeypatch.setattr(sa, "flex_available", lambda q: False)  # masked SDPA: no compile here
    grid = (LAYOUT.frames, LAYOUT.height, LAYOUT.width)
    config = VideoAttentionConfig(pattern=WINDOW, dense_steps=1, full_every=3, force_sparse=True)
    plan = VideoAttentionPlan(config, grid)
    modes = []
    for step in range(7):
        plan.begin_evaluation(step)
        modes.append(plan.mode)
    assert modes == ["full+residual", "sparse", "sparse"] * 2 + ["full+residual"]
    q, k, v = qkv()
    q2, k2, v2 = qkv(seed=1)
    with torch.no_grad(), use_attention_plan(plan):
        plan.begin_evaluation(0)
        full = attention(q, k, v)  # layer 0
        attention(q2, k2, v2)  # layer 1
        plan.begin_evaluation(1)
        same = attention(q, k, v)  # layer 0 again: sparse + (full - sparse) = full
        later = attention(q, k, v2)  # layer 1: sparse on new inputs + layer 1's residual
    mask = sa.dense_mask(WINDOW, LAYOUT)
    torch.testing.assert_close(full, attention_reference(q, k, v), atol=1e-5, rtol=0)
    torch.testing.assert_close(same, full, atol=1e-5, rtol=0)
    residual = attention_reference(q2, k2, v2) - sa.sparse_attention_reference(q2, k2, v2, mask)
    expected = sa.sparse_attention_reference(q, k, v2, mask) + residual
    torch.testing.assert_close(later, expected, atol=1e-5, rtol=0)
    assert plan.choices == {"dense": 2, "sparse:sdpa_mask": 2}


def test_plan_without_force_stays_dense_on_small_videos():
    plan = VideoAttentionPlan(VideoAttentionConfig(pattern=STA, dense_steps=0), (4, 4, 8))
    q, k, v = qkv()
    with use_attention_plan(plan):
        plan.begin_evaluation(5)
        out = attention(q, k, v)
    torch.testing.assert_close(out, attention_reference(q, k, v), atol=1e-5, rtol=0)
    assert plan.mode == "sparse" and plan.choices == {"dense": 1}
    assert plan.last_choice.reason == f"{LAYOUT.tokens} tokens < 8192 on cpu"


class _OnDevice:
    """Stands in for q / k / v on a device this machine may not have: only `.device` is read."""

    def __init__(self, device: str):
        self.device = torch.device(device)


def test_masks_are_cached_per_device_not_per_device_type(monkeypatch):
    """A mask built for cuda:0 must not serve attention on cuda:1: its indices would sit on the
    wrong GPU. Both paths ask their cache for the tensors' own device, index included."""
    asked = []
    monkeypatch.setattr(sa, "block_mask", lambda pattern, layout, device: asked.append(device))
    monkeypatch.setattr(sa, "_compiled_flex", lambda: lambda q, k, v, block_mask: q)
    monkeypatch.setattr(sa, "dense_mask", lambda pattern, layout, device: asked.append(device))
    monkeypatch.setattr(sa.F, "scaled_dot_product_attention", lambda q, k, v, attn_mask: q)
    sa._cached_dense_mask.cache_clear()
    for device in ("cuda:0", "cuda:1", "cuda:1"):
        q = _OnDevice(device)
        sa.flex_sparse_attention(q, q, q, WINDOW, LAYOUT)  # WINDOW: natural order, no permutation
        sa.sdpa_sparse_attention(q, q, q, WINDOW, LAYOUT)
    assert asked == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:1"]
    sa._cached_dense_mask.cache_clear()


def test_block_masks_are_built_on_the_device_they_are_cached_for():
    layout = sa.VideoLayout(text=16, frames=4, height=8, width=16)
    pattern = sa.SparsePattern("sta", window=(1, 1, 1), tile=(2, 4, 8))
    on_meta = sa.block_mask(pattern, layout, "meta")
    assert on_meta is not sa.block_mask(pattern, layout, "cpu")
    assert on_meta.kv_indices.device.type == "meta"
