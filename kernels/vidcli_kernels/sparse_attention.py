"""Sparse attention over video tokens: 3-D windows, sliding tiles and frame tiles.

Sequence layout: `[text (L_txt) | image (T·H·W, t-major, then h, then w)]`, the MMDiT's joint
order; q, k, v and outputs are (B, heads, L, head_dim). Text rows and columns always stay dense.
Patterns (shared/reference/attention-tokens-solvers.md §3-§5):
- ``window``: DiTFastAttn's local window, extended to a 3-D box: an image query sees the image
  keys with |Δt| <= r_t, |Δh| <= r_h, |Δw| <= r_w (`window` gives the radii).
- ``sta``: Sliding Tile Attention: the image is cut into tiles of `tile` tokens; a query tile sees
  the `window` tiles around it per axis, the window centre pushed inside the canvas at the borders.
- ``frame_tile``: Efficient-vDiT's k:(T−k) attention tile: a frame sees itself and the first k
  `global_frames`, which see every frame.

Three paths compute the same masked softmax attention: FlexAttention with a cached block mask
(CUDA, and CPU forward under `torch.compile`), SDPA with a boolean mask, and
`sparse_attention_reference` (float32, the definition of correct). `choose_path` picks one and
says why; it stays dense where the sparse path would be slower (measured, see
SPARSE_MIN_TOKENS).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from vidcli_kernels.attention import dense_attention

PatternKind = Literal["window", "sta", "frame_tile"]
PATTERNS: tuple[str, ...] = ("window", "sta", "frame_tile")
Path = Literal["dense", "flex", "sdpa_mask"]

# Below these token counts the flex path is slower than dense SDPA, so `choose_path` stays dense.
# CPU: measured on a shared 2-core x86 with torch 2.13 (docs/benchmarks.md, "Sparse attention"):
# flex beat dense SDPA from 8k tokens at 75-85 % block sparsity and lost at 4k.
# CUDA: not measured here (no GPU in this session); FlexAttention's fixed cost per launch is
# amortised from a few thousand tokens, and 8k is kept until a GPU row says otherwise.
SPARSE_MIN_TOKENS = {"cpu": 8192, "cuda": 8192}
# Below this fraction of skipped blocks the flex path does not pay for its bookkeeping (the issue
# measured 2x slower than SDPA at 37.5 % on CPU).
SPARSE_MIN_BLOCK_SPARSITY = 0.5
FLEX_BLOCK_SIZE = 128


@dataclass(frozen=True)
class VideoLayout:
    """Token layout of one joint sequence: `text` tokens, then a T x H x W grid of image tokens."""

    text: int
    frames: int
    height: int
    width: int

    @property
    def image(self) -> int:
        return self.frames * self.height * self.width

    @property
    def tokens(self) -> int:
        return self.text + self.image


@dataclass(frozen=True)
class SparsePattern:
    """Which image-to-image pairs are computed (text rows and columns are always dense)."""

    kind: PatternKind = "sta"
    window: tuple[int, int, int] = (1, 3, 3)
    """window: radius in tokens per axis (t, h, w); sta: window width in tiles per axis."""
    tile: tuple[int, int, int] = (2, 4, 4)
    """sta: tile size in tokens per axis (t, h, w); the grid must be divisible by it."""
    global_frames: int = 1
    """frame_tile: the first k latent frames attend and are attended everywhere."""

    def check(self, layout: VideoLayout) -> str | None:
        """Why this pattern cannot run on `layout`, or None."""
        if self.kind == "sta":
            grid = (layout.frames, layout.height, layout.width)
            if any(g % s for g, s in zip(grid, self.tile, strict=True)):
                return f"grid {grid} is not divisible by the STA tile {self.tile}"
        return None


# ---------------------------------------------------------------- masks


def _grid(index: torch.Tensor, layout: VideoLayout):
    """Flat sequence index -> (is_image, t, h, w) in natural order."""
    j = index - layout.text
    hw = layout.height * layout.width
    return j >= 0, j // hw, (j // layout.width) % layout.height, j % layout.width


def _image_pairs(pattern: SparsePattern, layout: VideoLayout, qt, qh, qw, kt, kh, kw):
    """Whether image query (qt, qh, qw) attends to image key (kt, kh, kw)."""
    if pattern.kind == "window":
        rt, rh, rw = pattern.window
        return ((qt - kt).abs() <= rt) & ((qh - kh).abs() <= rh) & ((qw - kw).abs() <= rw)
    if pattern.kind == "frame_tile":
        g = pattern.global_frames
        return (qt == kt) | (qt < g) | (kt < g)
    grid = (layout.frames, layout.height, layout.width)
    keep = torch.ones_like(qt, dtype=torch.bool)
    axes = zip((qt, qh, qw), (kt, kh, kw), grid, pattern.tile, pattern.window, strict=True)
    for a, b, n, s, k in axes:
        tiles, half = n // s, k // 2
        # STA: the window centre is clamped so that border tiles still see k tiles.
        centre = (a // s).clamp(min(half, tiles - 1), max(tiles - 1 - half, 0))
        keep = keep & ((centre - b // s).abs() <= half)
    return keep


def mask_mod(pattern: SparsePattern, layout: VideoLayout):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` over natural-order indices."""

    def mod(b, h, q_idx, kv_idx):
        q_img, qt, qh, qw = _grid(q_idx, layout)
        k_img, kt, kh, kw = _grid(kv_idx, layout)
        image = _image_pairs(pattern, layout, qt, qh, qw, kt, kh, kw)
        return ~q_img | ~k_img | (q_img & k_img & image)

    return mod


def dense_mask(
    pattern: SparsePattern, layout: VideoLayout, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The (L, L) boolean mask (True = computed) in natural order: the reference."""
    idx = torch.arange(layout.tokens, device=device)
    return mask_mod(pattern, layout)(None, None, idx[:, None], idx[None, :])


def sparsity(pattern: SparsePattern, layout: VideoLayout) -> float:
    """Fraction of (query, key) pairs the pattern skips."""
    mod, keys = mask_mod(pattern, layout), torch.arange(layout.tokens)
    kept = sum(
        mod(None, None, rows[:, None], keys[None, :]).sum().item()
        for rows in torch.arange(layout.tokens).split(FLEX_BLOCK_SIZE)
    )
    return 1.0 - kept / layout.tokens**2


def sparse_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Masked softmax attention in float32: the definition of correct.

    q, k, v: (B, heads, L, head_dim); mask: (L, L) bool -> (B, heads, L, head_dim) in q's dtype
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v.float()).to(q.dtype)


# ---------------------------------------------------------------- FlexAttention path


def tile_major_order(pattern: SparsePattern, layout: VideoLayout) -> torch.Tensor | None:
    """For STA: a permutation of the sequence to [image in tile-major order | text], or None.

    In tile-major order a tile's tokens are contiguous, so with tiles a multiple of the block
    size every FlexAttention block is fully kept or fully skipped (no per-token mask work);
    attention is equivariant to a permutation applied to q, k and v alike.
    """
    if pattern.kind != "sta" or pattern.check(layout) is not None:
        return None
    T, H, W = layout.frames, layout.height, layout.width
    st, sh, sw = pattern.tile
    img = torch.arange(layout.image).reshape(T // st, st, H // sh, sh, W // sw, sw)
    img = img.permute(0, 2, 4, 1, 3, 5).reshape(-1) + layout.text
    return torch.cat((img, torch.arange(layout.text)))


def _permuted_mask_mod(pattern: SparsePattern, layout: VideoLayout, order: torch.Tensor):
    natural = mask_mod(pattern, layout)

    def mod(b, h, q_idx, kv_idx):
        return natural(b, h, order[q_idx], order[kv_idx])

    return mod


@functools.lru_cache(maxsize=32)
def block_mask(pattern: SparsePattern, layout: VideoLayout, device: str):
    """The FlexAttention BlockMask of a pattern, built once per (pattern, layout, device).

    `device` names one device (`cuda:1`, not `cuda`): a mask cached for another GPU would put
    the kernel's indices on the wrong one.

    Indices are those of `tile_major_order` when it applies, else natural order.
    """
    from torch.nn.attention.flex_attention import BlockMask

    order = tile_major_order(pattern, layout)
    mod = mask_mod(pattern, layout) if order is None else _permuted_mask_mod(pattern, layout, order)
    # Evaluated one row of blocks at a time: create_block_mask without compiling materialises
    # the whole L x L mask (minutes at 16k tokens on CPU); this takes a second.
    size, L = FLEX_BLOCK_SIZE, layout.tokens
    n = -(-L // size)
    keys = torch.arange(L)
    any_kept = torch.zeros(n, n, dtype=torch.bool)
    all_kept = torch.zeros(n, n, dtype=torch.bool)
    for qb, rows in enumerate(torch.arange(L).split(size)):
        kept = F.pad(mod(None, None, rows[:, None], keys[None, :]), (0, n * size - L))
        kept = kept.reshape(len(rows), n, size)
        any_kept[qb] = kept.any(dim=2).any(dim=0)
        all_kept[qb] = kept.all(dim=2).all(dim=0)  # a padded last block is never full
    partial = any_kept & ~all_kept

    def listing(blocks: torch.Tensor):
        # kept block indices first in each row, as FlexAttention reads the first `count` of them
        indices = torch.argsort((~blocks).to(torch.int8), dim=1, stable=True).to(torch.int32)
        return blocks.sum(dim=1).to(torch.int32)[None, None], indices[None, None]

    counts, indices = listing(partial)
    full_counts, full_indices = listing(all_kept)
    device_mod = mod if order is None else _permuted_mask_mod(pattern, layout, order.to(device))
    return BlockMask.from_kv_blocks(
        counts.to(device),
        indices.to(device),
        full_counts.to(device),
        full_indices.to(device),
        BLOCK_SIZE=size,
        mask_mod=device_mod,
        seq_lengths=(L, L),
    )


def block_sparsity(pattern: SparsePattern, layout: VideoLayout) -> float:
    """Fraction of FlexAttention blocks skipped (what the flex path saves), 0..1."""
    bm = block_mask(pattern, layout, "cpu")
    blocks = -(-layout.tokens // FLEX_BLOCK_SIZE)
    return 1.0 - (bm.kv_num_blocks.sum() + bm.full_kv_num_blocks.sum()).item() / blocks**2


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=False: a second mask_mod in the same process broke the automatic-dynamic recompile
    # of the CPU template (reference note §6).
    return torch.compile(flex_attention, dynamic=False)


def flex_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern, layout: VideoLayout
) -> torch.Tensor:
    """Sparse attention through FlexAttention (inference only on CPU: no backward there).

    q, k, v: (B, heads, L, head_dim) in natural order -> (B, heads, L, head_dim)
    """
    order = tile_major_order(pattern, layout)
    if order is not None:
        order = order.to(q.device)
        q, k, v = q[:, :, order], k[:, :, order], v[:, :, order]
    out = _compiled_flex()(q, k, v, block_mask=block_mask(pattern, layout, str(q.device)))
    if order is not None:
        out = torch.empty_like(out).index_copy_(2, order, out)
    return out


@functools.lru_cache(maxsize=8)
def _cached_dense_mask(pattern: SparsePattern, layout: VideoLayout, device: str) -> torch.Tensor:
    return dense_mask(pattern, layout, device)


def sdpa_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: SparsePattern, layout: VideoLayout
) -> torch.Tensor:
    """Sparse attention as SDPA with a boolean mask: same result, no saving (a fallback).

    q, k, v: (B, heads, L, head_dim) -> (B, heads, L, head_dim)
    """
    mask = _cached_dense_mask(pattern, layout, str(q.device))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------- dispatch


class PathChoice(NamedTuple):
    path: Path
    reason: str


def flex_available(q: torch.Tensor) -> bool:
    """FlexAttention runs here: CUDA, or a CPU forward without autograd (no CPU backward)."""
    if q.is_cuda:
        return True
    return q.device.type == "cpu" and not (torch.is_grad_enabled() and q.requires_grad)


def choose_path(
    q: torch.Tensor, pattern: SparsePattern, layout: VideoLayout, force: bool = False
) -> PathChoice:
    """Which path computes this attention, and why.

    Dense (exact, and faster) below SPARSE_MIN_TOKENS or SPARSE_MIN_BLOCK_SPARSITY; flex where it
    runs; with `force` (the caller needs the sparse result itself, e.g. a window residual) the
    SDPA-with-mask fallback where flex does not run.
    """
    problem = pattern.check(layout)
    if problem is not None:
        return PathChoice("dense", problem)
    if q.shape[2] != layout.tokens:
        return PathChoice("dense", f"{q.shape[2]} tokens do not match the layout's {layout.tokens}")
    device = "cuda" if q.is_cuda else "cpu"
    minimum = SPARSE_MIN_TOKENS.get(device, SPARSE_MIN_TOKENS["cuda"])
    if not force and layout.tokens < minimum:
        return PathChoice("dense", f"{layout.tokens} tokens < {minimum} on {device}")
    if not flex_available(q):
        if force:
            return PathChoice("sdpa_mask", "FlexAttention has no backward on CPU")
        return PathChoice("dense", "FlexAttention has no backward on CPU")
    skipped = block_sparsity(pattern, layout)
    if not force and skipped < SPARSE_MIN_BLOCK_SPARSITY:
        return PathChoice(
            "dense", f"{skipped:.0%} of blocks skipped < {SPARSE_MIN_BLOCK_SPARSITY:.0%}"
        )
    return PathChoice("flex", f"{layout.tokens} tokens, {skipped:.0%} of blocks skipped")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: SparsePattern,
    layout: VideoLayout,
    path: Path | None = None,
) -> torch.Tensor:
    """softmax(q kᵀ/√d + mask) v over the pattern's pairs, by `path` (default: `choose_path`).

    q, k, v: (B, heads, L, head_dim), L = layout.tokens -> (B, heads, L, head_dim). The dense path
    attends everywhere (exact attention, chosen only where it is also faster).
    """
    path = path or choose_path(q, pattern, layout).path
    if path == "flex":
        return flex_sparse_attention(q, k, v, pattern, layout)
    if path == "sdpa_mask":
        return sdpa_sparse_attention(q, k, v, pattern, layout)
    return dense_attention(q, k, v)
