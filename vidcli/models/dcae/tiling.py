"""Tiled encode/decode: run the autoencoder on overlapping (T, H, W) tiles and cross-fade them.

Tiles are laid out in latent units: a tile of L latent positions starts every int(L * (1 - overlap))
positions; the last tile ends at the border (it may be shorter). Each tile's output is placed at its
position in the full-size output and neighbours are blended with linear ramps over their overlap,
so the result always has the untiled shape. With the reference's tile sizes (a multiple of 128 px /
16 frames at overlap 0.25) this is exactly Open-Sora's blend. Peak activation memory is that of one
tile; only the output itself is full size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vidcli.errors import UsageError
from vidcli.models.dcae.config import TilingConfig

Span = tuple[int, int]
Compression = tuple[int, int]
"""(time, spatial) compression of the autoencoder: frames and pixels per latent position."""


def tile_spans(total: int, tile: int, overlap: float, min_len: int = 1) -> list[Span]:
    """[start, end) latent spans covering `total`; one span when the tile covers everything."""
    if total <= tile:
        return [(0, total)]
    stride = max(1, int(tile * (1 - overlap)))
    spans, start = [], 0
    while True:
        end = min(start + tile, total)
        # a 1-latent-frame tile decodes to 1 frame, not time_compression: widen a short tail
        spans.append((min(start, end - min_len), end))
        if end == total:
            return spans
        start += stride


def blend_weights(spans: list[Span]) -> list[Tensor]:
    """Per span, 1-D weights over it: linear ramps across each overlap, summing to 1 everywhere."""
    total = spans[-1][1]
    raw = []
    for k, (a, b) in enumerate(spans):
        w = torch.ones(b - a, dtype=torch.float64)
        if k > 0 and spans[k - 1][1] > a:  # fade in over the overlap with the previous tile
            e = spans[k - 1][1] - a
            w[:e] *= torch.arange(e, dtype=torch.float64) / e
        if k + 1 < len(spans) and spans[k + 1][0] < b:  # fade out over the next overlap
            e = b - spans[k + 1][0]
            w[b - a - e :] *= 1 - torch.arange(e, dtype=torch.float64) / e
        raw.append(w)
    norm = torch.zeros(total, dtype=torch.float64)
    for (a, b), w in zip(spans, raw, strict=True):
        norm[a:b] += w
    return [(w / norm[a:b]).float() for (a, b), w in zip(spans, raw, strict=True)]


def _check(compression: Compression, tiling: TilingConfig) -> tuple[int, int]:
    tc, sc = compression
    if tiling.spatial_tile < sc or tiling.spatial_tile % sc:
        raise UsageError(f"spatial_tile {tiling.spatial_tile}: use a multiple of {sc} px")
    if tiling.temporal_tile < tc or tiling.temporal_tile % tc:
        raise UsageError(f"temporal_tile {tiling.temporal_tile}: use a multiple of {tc} frames")
    if not 0 <= tiling.overlap <= 0.5:
        raise UsageError(f"tile overlap {tiling.overlap}: use a value in [0, 0.5]")
    return tiling.temporal_tile // tc, tiling.spatial_tile // sc


def _run_tiles(
    run: Callable[[Tensor], Tensor],
    x: Tensor,
    spans: list[list[Span]],
    in_span: Callable[[int, Span], Span],
    out_span: Callable[[int, Span], Span],
) -> Tensor:
    """Run `run` on every (T, H, W) tile of x (B, C, T, H, W); blend outputs in output units."""
    if all(len(s) == 1 for s in spans):
        return run(x)
    out_spans = [[out_span(axis, s) for s in axis_spans] for axis, axis_spans in enumerate(spans)]
    weights = [blend_weights(axis_spans) for axis_spans in out_spans]
    out = None
    for i, (ta, tb) in enumerate(out_spans[0]):
        for j, (ha, hb) in enumerate(out_spans[1]):
            for k, (wa, wb) in enumerate(out_spans[2]):
                (t0, t1), (h0, h1), (w0, w1) = (
                    in_span(axis, spans[axis][n]) for axis, n in enumerate((i, j, k))
                )
                y = run(x[:, :, t0:t1, h0:h1, w0:w1])
                assert y.shape[2:] == (tb - ta, hb - ha, wb - wa), (y.shape, ta, tb, ha, hb)
                if out is None:
                    shape = (
                        *y.shape[:2],
                        out_spans[0][-1][1],
                        out_spans[1][-1][1],
                        out_spans[2][-1][1],
                    )
                    out = y.new_zeros(shape)
                w = (
                    weights[0][i].view(-1, 1, 1)
                    * weights[1][j].view(1, -1, 1)
                    * weights[2][k].view(1, 1, -1)
                ).to(y)
                out[:, :, ta:tb, ha:hb, wa:wb] += y * w
    return out


def tiled_encode(
    run: Callable[[Tensor], Tensor],
    x: Tensor,
    compression: Compression,
    latent_shape: Callable[[int, int, int], tuple[int, int, int, int]],
    tiling: TilingConfig,
) -> Tensor:
    """Raw encoder output of pixels x (B, C, T, H, W), computed tile by tile.

    `latent_shape(frames, height, width)` -> (C, T', H', W') is the autoencoder's latent shape.
    """
    lt, ls = _check(compression, tiling)
    _, t_lat, h_lat, w_lat = latent_shape(*x.shape[2:])
    factors = (compression[0], compression[1], compression[1])
    totals_in = x.shape[2:]
    spans = [
        tile_spans(t_lat, lt if tiling.temporal else t_lat, tiling.overlap),
        tile_spans(h_lat, ls if tiling.spatial else h_lat, tiling.overlap),
        tile_spans(w_lat, ls if tiling.spatial else w_lat, tiling.overlap),
    ]

    def in_span(axis: int, s: Span) -> Span:
        end = totals_in[axis] if s[1] == spans[axis][-1][1] else s[1] * factors[axis]
        return s[0] * factors[axis], end

    return _run_tiles(run, x, spans, in_span, lambda axis, s: s)


def tiled_decode(
    run: Callable[[Tensor], Tensor],
    z: Tensor,
    compression: Compression,
    decoded_frames: Callable[[int], int],
    tiling: TilingConfig,
) -> Tensor:
    """Decoder output of a raw latent z (B, C, T', H', W'), computed tile by tile.

    `decoded_frames(latent_frames)` is the number of frames the decoder makes of that many.
    """
    lt, ls = _check(compression, tiling)
    t_lat, h_lat, w_lat = z.shape[2:]
    tc, sc = compression
    spans = [
        tile_spans(t_lat, max(lt, 2) if tiling.temporal else t_lat, tiling.overlap, min(2, t_lat)),
        tile_spans(h_lat, ls if tiling.spatial else h_lat, tiling.overlap),
        tile_spans(w_lat, ls if tiling.spatial else w_lat, tiling.overlap),
    ]

    def out_span(axis: int, s: Span) -> Span:
        if axis == 0:
            return s[0] * tc, s[0] * tc + decoded_frames(s[1] - s[0])
        return s[0] * sc, s[1] * sc

    return _run_tiles(run, z, spans, lambda axis, s: s, out_span)
