"""Obeying a memory plan while generating: block streaming, and an AE decode that retries tiled.

`vidcli.plans` decides; these helpers carry the decision out:
- `stream_blocks`: the DiT's non-block layers live on the device, its transformer blocks on the
  host, each copied to the device for its own forward while the next one's copy runs on a side
  stream (the plan's `blocks` offload);
- `decode_with_retry`: an out-of-memory error during the AE decode retries with tiles half the
  size (down to one latent unit per tile) instead of ending the run.
"""

from __future__ import annotations

import contextlib
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


class BlockStream:
    """The host weights of a DiT's transformer blocks and the device copies in flight.

    Each block's parameters and buffers are held on the host (pinned once, on CUDA, so copies
    run asynchronously). When block i starts, its device copy replaces the host tensors in the
    block (copied now unless prefetched) and block i+1's copy starts on a side stream,
    overlapping block i's compute; an event orders the copy before the use. The first block of
    a call is copied when it starts, so no copy stays on the device between calls. When block i
    ends, its host tensors come back and the device copy is dropped: weights are not written
    back, inference does not change them. On the CPU there is no stream and no copy (`to`
    returns the host tensor), so the same code runs synchronously and computes exactly what an
    unstreamed model does.
    """

    def __init__(self, blocks: list[nn.Module], device: torch.device):
        self.device = device
        cuda = device.type == "cuda"
        self.copier = torch.cuda.Stream(device) if cuda else None
        self.index = {id(block): i for i, block in enumerate(blocks)}
        self.host: list[list[tuple[dict, str, torch.Tensor]]] = []
        pinned: dict[int, torch.Tensor] = {}  # a tensor shared inside the blocks is pinned once
        for block in blocks:
            block.to("cpu")
            slots = []
            for module in block.modules():
                for table in (module._parameters, module._buffers):
                    for name, tensor in table.items():
                        if tensor is None:
                            continue
                        if cuda:
                            if id(tensor) not in pinned:
                                pinned[id(tensor)] = _pinned(tensor)
                            table[name] = pinned[id(tensor)]
                        slots.append((table, name, table[name]))
            self.host.append(slots)
        self.ready: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}

    def fetch(self, i: int) -> None:
        """Start copying block i's weights to the device (on the side stream on CUDA)."""
        stream = torch.cuda.stream(self.copier) if self.copier else contextlib.nullcontext()
        with stream:
            copies = [t.detach().to(self.device, non_blocking=True) for _, _, t in self.host[i]]
        event = None
        if self.copier is not None:
            event = torch.cuda.Event()
            event.record(self.copier)
        self.ready[i] = (copies, event)

    def arrive(self, block: nn.Module, args) -> None:
        """Pre-hook: block i computes on its device copy; block i+1's copy starts."""
        i = self.index[id(block)]
        if i not in self.ready:
            self.fetch(i)
        copies, event = self.ready.pop(i)
        self.ready.clear()  # a block prefetched but skipped (a cache) is dropped, not kept
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for copy in copies:  # freed copies wait for the compute that reads them
                copy.record_stream(compute)
        for (table, name, _), copy in zip(self.host[i], copies, strict=True):
            table[name] = copy
        if i + 1 < len(self.host):  # the last block prefetches nothing: no copy outlives a call
            self.fetch(i + 1)

    def leave(self, block: nn.Module, args, out) -> None:
        """Post-hook: the host tensors return; the device copy is dropped, not copied back."""
        for table, name, host in self.host[self.index[id(block)]]:
            table[name] = host


def _pinned(tensor: torch.Tensor) -> torch.Tensor:
    """A page-locked host copy of `tensor`, a Parameter again when it was one."""
    data = tensor.detach().cpu().pin_memory()
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(data, requires_grad=tensor.requires_grad)
    return data


def stream_blocks(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Keep `model`'s `double_blocks` / `single_blocks` on the host and run each on `device`,
    the next block's copy prefetched while one computes (`BlockStream`).

    Everything else in the model moves to `device` now. Returns a function that removes the
    hooks (the blocks stay on the host).
    """
    for name, child in model.named_children():
        if name not in ("double_blocks", "single_blocks"):
            child.to(device)
    blocks = [*model.double_blocks, *model.single_blocks]
    stream = BlockStream(blocks, device)
    # The hooks return None: a value returned by a hook would replace the block's inputs or output.
    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(stream.arrive))
        handles.append(block.register_forward_hook(stream.leave))

    def remove() -> None:
        for handle in handles:
            handle.remove()
        stream.ready.clear()

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
