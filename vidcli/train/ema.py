"""Exponential moving average of the trained weights (kept in fp32, on the weights' device).

Only parameters that train are averaged: a frozen one (requires_grad False, e.g. the base
weights under LoRA) never moves, so its average is itself and no copy of it is kept (an 11B
base model under LoRA would otherwise double its memory for nothing).

Under ZeRO-3 a rank holds only its partition of each parameter (DeepSpeed's `ds_tensor`: the
flattened parameter, zero-padded to a multiple of the partition group's size, split in equal
contiguous slices, slice r on rank r). The EMA is kept the same way, each rank averaging its own
slice, so it costs 1/world of the full EMA per rank. Saving gathers the slices one parameter at a
time into the same whole-weight file as ZeRO-1/2; resuming reads back each rank's slice only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = model
        self.shadow = {
            name: _local(p).detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }
        # ZeRO-3: each shadow is this rank's flat slice, and `state_dict` is collective.
        self.sharded = any(_partitioned(p) for p in model.parameters())

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            shadow.lerp_(_local(params[name]).detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every parameter's average in fp32 on the CPU: the shadows, and each frozen parameter
        itself (copied off the device one tensor at a time, never all of them on it).

        Under ZeRO-3 every rank must call it: each parameter's slices are gathered in turn
        (one whole parameter on the device at a time), and rank 0 gets the dict, the others None.
        """
        rank = dist.get_rank() if self.sharded else 0
        state: dict[str, torch.Tensor] = {}
        for name, p in self.model.named_parameters():
            local = self.shadow[name] if name in self.shadow else _local(p).detach().float()
            if _partitioned(p):
                whole = _gathered(local, p)
                if rank == 0:
                    state[name] = whole.view(p.ds_shape).cpu().contiguous()
            else:
                state[name] = local.to("cpu", torch.float32).contiguous()
        return state if rank == 0 else None

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadows from whole weights; frozen parameters' entries (the model's own
        values) are unused. Under ZeRO-3 each rank takes its slice of each."""
        _check_complete(set(self.shadow), set(state))
        params = dict(self.model.named_parameters())
        for name, shadow in self.shadow.items():
            p = params[name]
            if _partitioned(p):
                start, stop = _flat_range(p)
                _fill(shadow, state[name].reshape(-1)[start:stop])
            else:
                shadow.copy_(state[name])

    def load_file(self, path: Path) -> None:
        """`load_state_dict` from a saved `state_dict()`, reading only the averaged tensors, one
        at a time; under ZeRO-3 only the rows that hold this rank's slice."""
        from safetensors import safe_open

        params = dict(self.model.named_parameters())
        with safe_open(str(path), framework="pt", device="cpu") as f:
            _check_complete(set(self.shadow), set(f.keys()))
            for name, shadow in self.shadow.items():
                p = params[name]
                if _partitioned(p):
                    _fill(shadow, read_flat_range(f, name, *_flat_range(p)))
                else:
                    shadow.copy_(f.get_tensor(name))


def read_flat_range(f: Any, name: str, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of tensor `name` flattened, from an open safetensors file `f`:
    only the rows (along dim 0) that hold them are read. Returns shape (stop - start,)."""
    view = f.get_slice(name)
    shape = view.get_shape()
    row = math.prod(shape[1:])  # elements per index of dim 0
    if not shape or row == 0 or start >= stop:
        return f.get_tensor(name).reshape(-1)[start:stop]
    first, last = start // row, -(-stop // row)
    return view[first:last].reshape(-1)[start - first * row : stop - first * row]


def _partitioned(p: nn.Parameter) -> bool:
    return getattr(p, "ds_tensor", None) is not None


def _local(p: nn.Parameter) -> torch.Tensor:
    """What this rank holds of `p`: its ZeRO-3 slice (flat, padded), or the whole parameter."""
    return p.ds_tensor if _partitioned(p) else p


def _flat_range(p: nn.Parameter) -> tuple[int, int]:
    """This rank's slice [start, stop) of `p` flattened, without the padding past its end."""
    size = p.ds_tensor.numel()
    start = min(dist.get_rank(group=p.ds_process_group) * size, p.ds_numel)
    return start, min(start + size, p.ds_numel)


def _fill(shadow: torch.Tensor, values: torch.Tensor) -> None:
    """A flat slice shadow (size,) from `values` (n <= size,); the padding past them is zero."""
    n = values.numel()
    shadow[:n].copy_(values)
    shadow[n:].zero_()


def _gathered(local: torch.Tensor, p: nn.Parameter) -> torch.Tensor:
    """The whole of `p` flattened, (ds_numel,), from every rank's slice `local` (collective)."""
    group = p.ds_process_group
    local = local.contiguous()
    # The list form: gloo (CPU ranks) has no all_gather_into_tensor (torch 2.13 aborts on it).
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group=group))]
    dist.all_gather(parts, local, group=group)
    return torch.cat(parts)[: p.ds_numel]


def _check_complete(needed: set[str], stored: set[str]) -> None:
    missing = needed - stored
    if missing:
        raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
