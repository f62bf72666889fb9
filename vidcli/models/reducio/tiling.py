"""The reference's spatial tiling (upstream `use_tiling=True`), reproduced exactly.

Tiles are 1.25·S pixels (S = tile stride) starting every S pixels, all frames in every tile;
the last ones in a row/column are smaller. Tiles are visited row by row; each is blended in place
with the already-blended tile above (its first e rows ramp from the neighbour's last e rows into
its own), then with the one on the left (columns). Encoded moments and decoded pixels are then
cropped to the stride and concatenated; content pyramids stay a grid, one feature list per tile,
and tile (i, j) of a decode reads the list of the same grid cell. Unlike vidcli's generic
cross-faded tiling this is not a partition of unity; it is what the released weights were used
with at 1024 px (shared/reference/reducio.md §7).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vidcli.errors import ShapeError


def blend_into(prev: Tensor, cur: Tensor, extent: int, dim: int) -> None:
    """In place: cur's first e slices along `dim` = prev's last e·(1 − y/e) + cur's own·(y/e).

    e = min(extent, both sizes along `dim`); nothing happens when e is 0.
    """
    e = min(extent, prev.shape[dim], cur.shape[dim])
    if e <= 0:
        return
    ramp = torch.arange(e, dtype=torch.float64) / e  # the reference's Python-float weights
    shape = [1] * cur.ndim
    shape[dim] = e
    own = ramp.to(cur).view(shape)
    other = (1 - ramp).to(cur).view(shape)
    head = cur.narrow(dim, 0, e)
    head.copy_(prev.narrow(dim, prev.shape[dim] - e, e) * other + head * own)


def _blend_grid(grid: list[list[list[Tensor]]], extent: Callable[[Tensor, int], int]) -> None:
    """Blend every tile's tensors with the tile above, then the tile to the left (raster order).

    `extent(prev, dim)` is the blend length for a neighbour tensor along dim (-2 rows, -1 cols).
    """
    for i, row in enumerate(grid):
        for j, tile in enumerate(row):
            for k, cur in enumerate(tile):
                if i > 0:
                    above = grid[i - 1][j][k]
                    blend_into(above, cur, extent(above, -2), -2)
                if j > 0:
                    left = row[j - 1][k]
                    blend_into(left, cur, extent(left, -1), -1)


def _starts(size: int, stride: int) -> range:
    return range(0, size, stride)


def _crop_concat(grid: list[list[list[Tensor]]], size: int) -> Tensor:
    rows = [torch.cat([t[0][..., :size, :size] for t in row], dim=-1) for row in grid]
    return torch.cat(rows, dim=-2)


def tiled_moments(
    run: Callable[[Tensor], Tensor], video: Tensor, stride: int, overlap: float, compression: int
) -> Tensor:
    """Posterior moments (B, 2E, T', H/c, W/c) of video (B, 3, T, H, W), encoded tile by tile.

    run: pixels tile -> moments (quant_conv ∘ encoder). Latent blend int(L·overlap), L = S/c.
    """
    latent_stride = int(stride / compression)
    tile = int(stride * (1 + overlap))
    h, w = video.shape[-2:]
    grid = [
        [[run(video[..., i : i + tile, j : j + tile])] for j in _starts(w, stride)]
        for i in _starts(h, stride)
    ]
    blend = int(latent_stride * overlap)
    _blend_grid(grid, lambda prev, dim: blend)
    return _crop_concat(grid, latent_stride)


def tiled_pyramid(
    run: Callable[[Tensor], list[Tensor]], frame: Tensor, stride: int, overlap: float
) -> list[list[list[Tensor]]]:
    """Content features per tile of frame (B, 3, H, W): grid[row][col] = that tile's feature list.

    Each level blends over int(n / (1 + overlap) · overlap) of its neighbour's n rows/columns.
    """
    tile = int(stride * (1 + overlap))
    h, w = frame.shape[-2:]
    grid = [
        [run(frame[..., i : i + tile, j : j + tile]) for j in _starts(w, stride)]
        for i in _starts(h, stride)
    ]
    _blend_grid(grid, lambda prev, dim: int(prev.shape[dim] / (1 + overlap) * overlap))
    return grid


def tiled_decode(
    run: Callable[[Tensor, list[Tensor]], Tensor],
    z: Tensor,
    pyramid: list[list[list[Tensor]]],
    stride: int,
    overlap: float,
    compression: int,
) -> Tensor:
    """Pixels (B, 3, T, H, W) from latent z (B, E, T', H/c, W/c), decoded tile by tile.

    run: (latent tile, the feature list of its grid cell) -> pixels (post_quant_conv ∘ decoder).
    """
    latent_stride = int(stride / compression)
    tile = int(latent_stride * (1 + overlap))
    h, w = z.shape[-2:]
    rows, cols = _starts(h, latent_stride), _starts(w, latent_stride)
    if (len(pyramid), len(pyramid[0])) != (len(rows), len(cols)):
        raise ShapeError(
            f"tiled decode: {len(rows)}x{len(cols)} latent tiles but the content pyramid has "
            f"{len(pyramid)}x{len(pyramid[0])}; encode the content with the same tiling"
        )
    grid = [
        [[run(z[..., i : i + tile, j : j + tile], pyramid[a][b])] for b, j in enumerate(cols)]
        for a, i in enumerate(rows)
    ]
    blend = int(stride * overlap)
    _blend_grid(grid, lambda prev, dim: blend)
    return _crop_concat(grid, stride)
