"""Non-causal multi-head attention with a backend chosen per call.

Layout everywhere: q, k, v and the output are (B, heads, L, head_dim); scale 1/sqrt(head_dim),
no mask (the MMDiT attends over every text and image token).

Backends (`attention_backend` picks one per call; `VIDCLI_ATTENTION=sdpa|sdpa_cudnn|flash_attn`
forces one for benchmarking):
- ``sdpa_cudnn``: SDPA with its cuDNN kernel first, on Hopper and newer GPUs with fp16/bf16
  inputs: 1.8x FlashAttention-2 there (gpu-anchors.md: 683 vs 369 TFLOP/s at 18,944 tokens);
- ``flash_attn``: FlashAttention-2 (`flash_attn.flash_attn_func`) on older GPUs, when installed;
- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention` with torch's own kernel choice
  (flash / memory-efficient on CUDA, a fused math kernel on CPU).
`attention_reference` is the closed form that defines what is correct.

An attention plan (`use_attention_plan`) can take over every `attention` call of a model
forward: sparse or window attention and token merging over video tokens (sparse_attention.py,
token_merging.py); model code keeps calling `attention` and never imports those paths.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

try:  # optional GPU extra: pip install vidcli[gpu]
    from flash_attn import flash_attn_func as _flash_attn_func
except ImportError:  # pragma: no cover - depends on the environment
    _flash_attn_func = None

BACKEND_ENV = "VIDCLI_ATTENTION"
BACKENDS = ("sdpa", "sdpa_cudnn", "flash_attn")
# Opt-out kept for scripts written against the first version of this module.
_DISABLE_FLASH_ENV = "VIDCLI_DISABLE_FLASH_ATTN"


def attention_backend(q: torch.Tensor) -> str:
    """Name of the backend `attention` uses for a query like `q` (see the module docstring)."""
    return choose_backend(
        cuda=q.is_cuda,
        low_precision=q.dtype in (torch.float16, torch.bfloat16),
        head_dim=q.shape[-1],
        capability=torch.cuda.get_device_capability(q.device) if q.is_cuda else None,
        flash_installed=_flash_attn_func is not None
        and os.environ.get(_DISABLE_FLASH_ENV, "0") != "1",
        forced=os.environ.get(BACKEND_ENV, ""),
    )


def choose_backend(
    *,
    cuda: bool,
    low_precision: bool,
    head_dim: int,
    capability: tuple[int, int] | None,
    flash_installed: bool,
    forced: str = "",
) -> str:
    """The backend policy: cuDNN SDPA on Hopper+, FlashAttention-2 before, plain SDPA otherwise."""
    if not cuda or not low_precision:
        return "sdpa"
    flash_ok = flash_installed and head_dim <= 256
    if forced in BACKENDS and (forced != "flash_attn" or flash_ok):
        return forced
    if capability is not None and capability[0] >= 9:
        return "sdpa_cudnn"
    return "flash_attn" if flash_ok else "sdpa"


def _cudnn_first():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ]
    return sdpa_kernel(order, set_priority=True)  # falls through when cuDNN cannot take a shape


AttentionPlan = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_PLAN: ContextVar[AttentionPlan | None] = ContextVar("vidcli_attention_plan", default=None)


@contextmanager
def use_attention_plan(plan: AttentionPlan | None) -> Iterator[None]:
    """Route every `attention` call inside the block through `plan(q, k, v)` (None = dense)."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over all keys, or the active attention plan's version of it.

    q, k, v: (B, heads, L, head_dim) -> (B, heads, L, head_dim)
    """
    # Dynamo cannot trace ContextVar.get (one graph break per attention call); compiled callers
    # (vidcli.compile) check `attention_plan()` outside their graphs and run eagerly under a plan.
    plan = None if torch.compiler.is_compiling() else _PLAN.get()
    if plan is not None:
        return plan(q, k, v)
    return dense_attention(q, k, v)


def attention_plan() -> AttentionPlan | None:
    """The attention plan active in this context (`use_attention_plan`), or None."""
    return _PLAN.get()


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v over all keys on the fastest backend (`attention_backend`).

    q, k, v: (B, heads, L, head_dim) -> (B, heads, L, head_dim)
    """
    backend = attention_backend(q)
    if backend == "flash_attn":
        # flash-attn wants (B, L, heads, head_dim); the transposes are views.
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend == "sdpa_cudnn":
        with _cudnn_first():
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch softmax attention, computed in float32: the definition of correct.

    q, k, v: (B, heads, L, head_dim) -> (B, heads, L, head_dim) in q's dtype
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v.float()).to(q.dtype)
