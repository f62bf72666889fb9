"""Memory of a forward pass measured on `meta` tensors: no data, no device, exact byte counts.

`measure_peak` runs a callable under a dispatch mode that adds up the storage bytes of every
tensor created inside it while that tensor is alive, and keeps the peak. `saved_for_backward`
adds up what autograd keeps for the backward pass. Both treat SDPA as the fused CUDA kernels run
it (flash / cuDNN keep O(L) memory: q, k, v, the output and a row statistic for backward), not as
the CPU math kernel that materialises L x L scores.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveBytes(TorchDispatchMode):
    """Adds up the storage bytes of tensors created inside it while they are alive; keeps the
    peak. Tensors made before entering (weights, inputs) are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage id -> [bytes, live tensor views]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        entry = self._storages.get(key)
        if entry is None:
            entry = self._storages[key] = [t.untyped_storage().nbytes(), 0]
            self.live += entry[0]
            self.peak = max(self.peak, self.live)
        entry[1] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live -= entry[0]
            del self._storages[key]


class _FlashSaves(torch.autograd.Function):
    """SDPA's autograd record as flash / cuDNN keep it: q, k, v, the output and the fp32
    log-sum-exp per query row (B, H, L), no L x L scores."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _FusedAttention(TorchFunctionMode):
    """SDPA as the fused CUDA kernels run it: only the output (and a row statistic) is stored;
    under grad, what they save for backward (`_FlashSaves`)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
                return _FlashSaves.apply(q, k, v)
            return q.new_empty((*q.shape[:-1], v.shape[-1]))
        return func(*args, **kwargs)


def measure_peak(run, *, grad: bool = False) -> int:
    """Peak bytes of the tensors `run()` creates (on `meta`), with fused attention.

    grad=False runs under inference mode; grad=True keeps what autograd saves for backward.
    """
    mode = contextlib.nullcontext() if grad else torch.inference_mode()
    with mode, _FusedAttention(), _LiveBytes() as live:
        out = run()
        del out
    return live.peak


def saved_for_backward(run, module: nn.Module) -> int:
    """Bytes autograd saves for backward during `run()`: activations, not `module`'s weights."""
    weights = {p.untyped_storage()._cdata for p in module.parameters()}
    seen: dict[int, int] = {}
    held: list[torch.Tensor] = []  # no storage is freed and its address reused while counting

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = t.untyped_storage()._cdata
        if key not in weights:
            seen.setdefault(key, t.untyped_storage().nbytes())
        held.append(t)
        return t

    with _FusedAttention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
