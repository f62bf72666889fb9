"""`vidcli benchmark --kernels`: each vidcli_kernels kernel against its PyTorch reference on the
same inputs: time, speedup and largest difference.

The attention reference always computes in float32 (it upcasts its inputs), so a bfloat16 kernel
against it is not equal work: such a row says so (`equal_work`, `differs`), and a float32 row,
where both compute in float32, is added beside it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from vidcli.benchmark.attention import attention_sizes
from vidcli.benchmark.options import SEED, WARMUP, Settings
from vidcli.devices import resolve_dtype
from vidcli.timing import median_ratio, time_interleaved, time_once

REFERENCE_COMPUTE = torch.float32
"""What `attention_reference` computes in, whatever its inputs (vidcli_kernels.attention)."""


def kernels_bench(s: Settings) -> list[dict[str, Any]]:
    """Each vidcli_kernels kernel against its reference at `--dtype`."""
    device = torch.device(s.device)
    return attention_rows(device, resolve_dtype(s.dtype, device), s.repeat)


def attention_rows(device: torch.device, dtype: torch.dtype, repeat: int) -> list[dict[str, Any]]:
    """`attention` vs `attention_reference` on `dtype` inputs, plus on float32 inputs (equal
    work) when `dtype` is not float32; kernel and reference timed interleaved."""
    from vidcli_kernels.attention import attention, attention_backend
    from vidcli_kernels.attention import attention_reference as ref_fn

    heads, dim, token_counts = attention_sizes(device)
    tokens = token_counts[0]
    rows = []
    for input_dtype in dict.fromkeys((dtype, REFERENCE_COMPUTE)):
        torch.manual_seed(SEED)
        q, k, v = (
            torch.randn(1, heads, tokens, dim, device=device, dtype=input_dtype) for _ in range(3)
        )
        with torch.no_grad():
            kernel, reference = time_interleaved(
                [partial(time_once, partial(fn, q, k, v), device) for fn in (attention, ref_fn)],
                repeat,
                WARMUP,
            )
            out, ref = attention(q, k, v).float(), ref_fn(q, k, v).float()
        equal = input_dtype == REFERENCE_COMPUTE
        name = _name(input_dtype)
        rows.append(
            {
                "kernel": "attention",
                "backend": attention_backend(q),
                "shape": [1, heads, tokens, dim],
                "dtype": name,
                "kernel_compute": name,
                "reference_compute": _name(REFERENCE_COMPUTE),
                "equal_work": equal,
                "differs": None
                if equal
                else f"not equal work: the kernel computes in {name} (float32 accumulation), "
                f"the reference upcasts to {_name(REFERENCE_COMPUTE)}",
                "kernel_s": kernel.median,
                "reference_s": reference.median,
                "speedup": median_ratio(reference, kernel),
                "max_abs_err": (out - ref).abs().max().item(),
            }
        )
    return rows


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
