"""`vidcli benchmark --kernels`: each vidcli_kernels kernel against its PyTorch reference on the
same inputs: time, speedup and largest difference."""

from __future__ import annotations

from typing import Any

import torch

from vidcli.benchmark.attention import attention_sizes, no_grad_call
from vidcli.benchmark.options import SEED, WARMUP, Settings
from vidcli.timing import time_calls


def kernels_bench(s: Settings) -> list[dict[str, Any]]:
    """Each vidcli_kernels kernel against its reference: time, speedup, largest difference."""
    from vidcli_kernels.attention import attention, attention_backend, attention_reference

    device = torch.device(s.device)
    heads, dim, token_counts, dtype = attention_sizes(device)
    tokens = token_counts[0]
    torch.manual_seed(SEED)
    q, k, v = (torch.randn(1, heads, tokens, dim, device=device, dtype=dtype) for _ in range(3))
    kernel = time_calls(no_grad_call(attention, q, k, v), device, s.repeat, WARMUP)
    reference = time_calls(no_grad_call(attention_reference, q, k, v), device, s.repeat, WARMUP)
    err = (attention(q, k, v).float() - attention_reference(q, k, v).float()).abs().max().item()
    return [
        {
            "kernel": "attention",
            "backend": attention_backend(q),
            "shape": [1, heads, tokens, dim],
            "dtype": str(dtype).removeprefix("torch."),
            "kernel_s": kernel.median,
            "reference_s": reference.median,
            "speedup": reference.median / kernel.median,
            "max_abs_err": err,
        }
    ]
