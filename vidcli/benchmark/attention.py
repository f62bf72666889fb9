"""`vidcli benchmark --attention`: forward and forward+backward time of each attention backend
(SDPA and its pinned CUDA backends, flash-attn when installed, the dense reference) at a few token
counts."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from vidcli.benchmark.options import SEED, WARMUP, Settings
from vidcli.devices import resolve_dtype
from vidcli.timing import Timing, time_interleaved, time_once
from vidcli_kernels.attention import attention_backend


def attention_sizes(device: torch.device) -> tuple[int, int, tuple[int, ...]]:
    """(heads, head_dim, token counts): mmdit-s heads on CPU, the 11B's on CUDA."""
    if device.type == "cuda":
        return 24, 128, (4096, 18944, 74240)
    return 6, 64, (256, 1024, 2048)


def _attention_backends(device: torch.device) -> dict[str, Any]:
    from vidcli_kernels.attention import _flash_attn_func, attention_reference

    backends: dict[str, Any] = {"sdpa": F.scaled_dot_product_attention}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def pinned(kind):
            def run(q, k, v):
                with sdpa_kernel(kind):
                    return F.scaled_dot_product_attention(q, k, v)

            return run

        backends = {
            "sdpa": F.scaled_dot_product_attention,
            "sdpa-cudnn": pinned(SDPBackend.CUDNN_ATTENTION),
            "sdpa-flash": pinned(SDPBackend.FLASH_ATTENTION),
            "sdpa-efficient": pinned(SDPBackend.EFFICIENT_ATTENTION),
        }
        if _flash_attn_func is not None:
            backends["flash_attn"] = lambda q, k, v: _flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2)
    backends["reference"] = attention_reference
    return backends


# The reference materialises (heads, L, L) float32 scores several times over.
_REFERENCE_SCORE_BYTES = {"cpu": 2**30, "cuda": 8 * 2**30}


def attention_bench(s: Settings) -> list[dict[str, Any]]:
    """Forward and forward+backward time of each attention backend at a few token counts; at
    each count the backends are timed interleaved (A B C A B C ...)."""
    device = torch.device(s.device)
    heads, dim, token_counts = attention_sizes(device)
    dtype = resolve_dtype(s.dtype, device)
    rows = []
    for tokens in token_counts:
        torch.manual_seed(SEED)
        q, k, v = (
            torch.randn(1, heads, tokens, dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        grad = torch.randn_like(q)
        # The backend `vidcli_kernels.attention.attention` picks for this input (its row is
        # marked `default`).
        chosen = attention_backend(q.detach()).replace("sdpa_cudnn", "sdpa-cudnn")
        flops = 4 * heads * tokens**2 * dim  # QK^T and PV; backward is 2.5x (five matmuls)
        timed: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {}
        for name, fn in _attention_backends(device).items():
            row = {"backend": name, "tokens": tokens, "heads": heads, "head_dim": dim}
            row["default"] = name == chosen
            row.update(forward_s=None, fwd_bwd_s=None, forward_flops=None, fwd_bwd_flops=None)
            if name == "reference" and heads * tokens**2 * 4 > _REFERENCE_SCORE_BYTES[device.type]:
                rows.append({**row, "skipped": "scores too large for the reference"})
                continue
            calls = (no_grad_call(fn, q, k, v), _fwd_bwd(fn, q, k, v, grad))
            try:
                for call in calls:
                    call()
            except RuntimeError as e:  # a pinned SDPA backend that does not take this input
                rows.append({**row, "skipped": str(e).splitlines()[0]})
                continue
            rows.append(row)
            timed[name] = calls
        fwd, both = (_interleaved([pair[i] for pair in timed.values()], s) for i in (0, 1))
        measured = {name: (f, b) for name, f, b in zip(timed, fwd, both, strict=True)}
        for row in rows:
            if row["tokens"] == tokens and row["backend"] in measured:
                f, b = measured[row["backend"]]
                row.update(
                    forward_s=f.median,
                    fwd_bwd_s=b.median,
                    forward_flops=flops / f.median,
                    fwd_bwd_flops=3.5 * flops / b.median,
                    spread=max(f.spread, b.spread),
                )
    return rows


def _interleaved(calls: list[Callable[[], None]], s: Settings) -> list[Timing]:
    """Timings of `calls` run alternately, one call each per round."""
    device = torch.device(s.device)
    return time_interleaved([partial(time_once, c, device) for c in calls], s.repeat, WARMUP)


def no_grad_call(fn, *args):
    """fn(*args) as a no-argument call without autograd, for the timing helpers."""

    @torch.no_grad()
    def call() -> None:
        fn(*args)

    return call


def _fwd_bwd(fn, q, k, v, grad):
    """One forward and backward of fn(q, k, v), gradients dropped after."""

    def call() -> None:
        fn(q, k, v).backward(grad)
        q.grad = k.grad = v.grad = None

    return call
