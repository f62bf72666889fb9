"""Obeying a memory plan while generating: block streaming, and an AE decode that retries tiled.

`vidcli.plans` decides; these helpers carry the decision out:
- `stream_blocks`: the DiT's non-block layers live on the device, its transformer blocks on the
  CPU, each moved to the device for its own forward (the plan's `blocks` offload);
- `decode_with_retry`: an out-of-memory error during the AE decode retries with tiles half the
  size (down to one latent unit per tile) instead of ending the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from vidcli.console import log
from vidcli.errors import StageFailed
from vidcli.models.content import decode as content_decode
from vidcli.models.dcae.config import TilingConfig

# Tiles tried first when an untiled decode runs out of memory (Open-Sora's defaults).
FIRST_TILING = TilingConfig(spatial_tile=256, temporal_tile=32, overlap=0.25)


def stream_blocks(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Keep `model`'s `double_blocks` / `single_blocks` on the CPU and run each on `device`.

    Everything else in the model moves to `device` now. Returns a function that removes the
    hooks (the blocks stay on the CPU).
    """
    blocks = [*model.double_blocks, *model.single_blocks]
    for name, child in model.named_children():
        if name not in ("double_blocks", "single_blocks"):
            child.to(device)

    # Hooks return None: a value returned by a hook would replace the block's inputs or output.
    def arrive(block: nn.Module, args) -> None:
        block.to(device)

    def leave(block: nn.Module, args, out) -> None:
        block.to("cpu")

    handles = []
    for block in blocks:
        block.to("cpu")
        handles.append(block.register_forward_pre_hook(arrive))
        handles.append(block.register_forward_hook(leave))

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def smaller_tiling(tiling: TilingConfig | None, spatial_unit: int, temporal_unit: int):
    """Tiles half as large in space and time (not below one latent unit); None when at the floor."""
    if tiling is None:
        return FIRST_TILING
    spatial = max(spatial_unit, (tiling.spatial_tile // 2) // spatial_unit * spatial_unit)
    temporal = max(temporal_unit, (tiling.temporal_tile // 2) // temporal_unit * temporal_unit)
    if (spatial, temporal) == (tiling.spatial_tile, tiling.temporal_tile):
        return None
    return dataclasses.replace(tiling, spatial_tile=spatial, temporal_tile=temporal)


def decode_with_retry(
    ae: nn.Module, latents: torch.Tensor, content: torch.Tensor | None = None
) -> torch.Tensor:
    """`ae.decode(latents)`; on a CUDA out-of-memory error, again with smaller tiles.

    latents: (B, C, T', H', W') -> (B, 3, T, H, W); content: the content frames (B, 3, H, W) a
    conditioned AE decodes from (`models.content`). The tiling that worked stays on `ae`.
    """
    while True:
        try:
            return content_decode(ae, latents, content)
        except torch.OutOfMemoryError:
            smaller = smaller_tiling(ae.tiling, ae.spatial_compression, ae.time_compression)
            if smaller is None:
                raise StageFailed(
                    f"AE decode ran out of device memory even with {ae.tiling.spatial_tile} px / "
                    f"{ae.tiling.temporal_tile}-frame tiles",
                    hint="lower the resolution or frames, or run `vidcli generate --plan`",
                ) from None
            log.warning(
                "AE decode ran out of memory%s; retrying with %d px / %d-frame tiles",
                "" if ae.tiling is None else f" with {ae.tiling.spatial_tile} px tiles",
                smaller.spatial_tile,
                smaller.temporal_tile,
            )
            ae.tiling = smaller
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
