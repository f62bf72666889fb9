"""The one place that decides where tensors live and in which precision.

- Inference (`generate`, `benchmark`): `--device` (default: CUDA when available, else CPU) and
  `--dtype` (default: bf16 on CUDA, fp32 on CPU).
- Training ranks: the DeepSpeed engine's device (`engine.device`, from DeepSpeed's accelerator);
  every batch is moved there by the step loop with `move_to`.
- Noise stays reproducible across devices: it is drawn from CPU generators, then moved
  (`randn_on`), because CUDA and CPU generators give different numbers for the same seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch

from vidcli.errors import UsageError

DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}
DEVICE_KINDS = ("cpu", "cuda")


def dtype_name(dtype: torch.dtype) -> str:
    """'bf16' / 'fp16' / 'fp32' for a torch dtype."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise UsageError(f"dtype {dtype}: vidcli computes in {', '.join(DTYPES)}")


def resolve_device(name: str | None = None, *, require_available: bool = True) -> torch.device:
    """`--device` -> torch.device; None or 'auto' = CUDA when available, else CPU.

    `require_available=False` accepts 'cuda' on a machine without one (memory plans only).
    """
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_KINDS:
        raise UsageError(f"--device {name}: choose auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and require_available:
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: no CUDA device is visible to torch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`--dtype` -> torch.dtype; None = bf16 on CUDA (tensor cores), fp32 on CPU."""
    if name in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def move_to(obj: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """`obj` with every tensor inside (dicts, lists, tuples) moved to `device`.

    Floating tensors are also cast to `dtype` when given; anything else (generators, strings,
    numbers) is returned unchanged, so a batch keeps its CPU generator for reproducible noise.
    """
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype, non_blocking=True)
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return type(obj)((k, move_to(v, device, dtype)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(move_to(v, device, dtype) for v in obj)
    if isinstance(obj, tuple):  # a NamedTuple
        return type(obj)(*(move_to(v, device, dtype) for v in obj))
    return obj


def randn_on(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from `generator`, then moved: same seed, same noise
    on every device."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(device, dtype)


def autocast(device: torch.device | str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision on `device` for a low-precision `dtype`; a no-op for fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def peak_memory_gb(device: torch.device) -> float | None:
    """Peak allocated CUDA memory in GB (1e9 bytes) since the last reset; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 1e9


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory measurement (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rank_device() -> torch.device:
    """This process's device in a multi-process job: `cuda:LOCAL_RANK` when CUDA is available
    (one GPU per local rank), else the CPU."""
    import os

    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
