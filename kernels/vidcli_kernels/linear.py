"""`y = x W^T + b` with the CPU GEMM library chosen per machine (inference only).

PyTorch runs an fp32 `nn.functional.linear` on CPU through MKL, and MKL picks its code path by
CPU vendor: on AMD it runs its AVX2 kernels even where the core has AVX-512. oneDNN picks by
instruction set, so the same GEMM through `torch.ops.mkldnn._linear_pointwise` (oneDNN, plain
fp32 arithmetic, unpacked weights) runs 2.1-3.2x faster on an AVX-512 AMD EPYC (MMDiT-demo shapes
up to the 11B layout's; docs/benchmarks.md "CPU linears"). Products below 2^22 multiply-adds
(the demo's 2-row modulation, small GEMVs) stay on MKL, whose call costs less.

Backends (`VIDCLI_CPU_LINEAR=auto|onednn|aten`, default auto):
- ``onednn``: fp32 CPU linears that need no gradient go to oneDNN; under `torch.compile` through
  the opaque op ``vidcli::onednn_linear`` (inductor lowers oneDNN's own op only for frozen,
  prepacked weights);
- ``aten``: `nn.functional.linear` always (MKL on x86);
- ``auto``: ``onednn`` on x86 CPUs not made by Intel, else ``aten`` (on Intel MKL runs its
  AVX-512 code, and oneDNN was not measured faster there).
Anything else (autograd, autocast, bf16/fp16, GPU tensors, quantized or distributed weight
subclasses) calls `nn.functional.linear`, so LoRA, torchao, DeepSpeed and training see plain
PyTorch.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

BACKEND_ENV = "VIDCLI_CPU_LINEAR"
BACKENDS = ("auto", "onednn", "aten")
MIN_ONEDNN_MACS = 1 << 22
"""Smallest rows x in x out product sent to oneDNN: at 2^21 the two break even (0.8-1.0x)."""


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(..., in) x (out, in) [+ (out,)] -> (..., out); oneDNN where `uses_onednn` says so."""
    if not uses_onednn(x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.compiler.is_compiling():
        return torch.ops.vidcli.onednn_linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def uses_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether `linear` sends this call to oneDNN (see the module docstring)."""
    if cpu_linear_backend() != "onednn":
        return False
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if any(type(t) not in _PLAIN for t in tensors):  # quantized, DTensor, ...: their own dispatch
        return False
    if x.device.type != "cpu" or any(t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_autocast_enabled("cpu"):
        return False  # autocast lowers F.linear to its dtype; oneDNN's op would stay fp32
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False  # oneDNN's op has no backward
    return x.numel() * weight.shape[0] >= MIN_ONEDNN_MACS


_PLAIN = (torch.Tensor, nn.Parameter)


def cpu_linear_backend() -> str:
    """The backend for CPU linears in this process: ``onednn`` or ``aten``.

    Read on every eager call; a compiled graph keeps the backend it was traced with.
    """
    forced = os.environ.get(BACKEND_ENV, "auto") or "auto"
    if forced not in BACKENDS:
        raise ValueError(f"{BACKEND_ENV}={forced!r}: choose one of {', '.join(BACKENDS)}")
    if forced == "onednn" and not ONEDNN_AVAILABLE:
        raise ValueError(f"{BACKEND_ENV}=onednn: this torch build has no oneDNN; use aten")
    return AUTO_BACKEND if forced == "auto" else forced


def auto_backend(machine: str, vendor: str, onednn_available: bool) -> str:
    """What ``auto`` means on a machine: oneDNN on x86 CPUs not made by Intel, else MKL (aten)."""
    x86 = machine.lower() in ("x86_64", "amd64")
    return "onednn" if x86 and onednn_available and vendor not in ("GenuineIntel", "") else "aten"


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``; "" where unknown)."""
    return cpuinfo_field("vendor_id")


def cpuinfo_field(name: str) -> str:
    """The first `name : value` of /proc/cpuinfo ("" where there is none, e.g. off Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


# Decided once at import: module constants are what dynamo reads without tracing into torch.backends
# or /proc (a graph break per linear).
ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()
AUTO_BACKEND = auto_backend(platform.machine(), cpu_vendor(), ONEDNN_AVAILABLE)

# A plain library op rather than `torch.library.custom_op`: 1 us per call instead of 6 (its
# autograd wrapper), and the op is only called when no gradient is needed.
_LIBRARY = torch.library.Library("vidcli", "DEF")
_LIBRARY.define("onednn_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor")


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


_LIBRARY.impl("onednn_linear", _onednn_linear, "CPU")


@torch.library.register_fake("vidcli::onednn_linear")
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class Linear(nn.Linear):
    """`nn.Linear` whose forward is `linear`: same parameters, keys and `isinstance`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = [
    "AUTO_BACKEND",
    "BACKENDS",
    "BACKEND_ENV",
    "MIN_ONEDNN_MACS",
    "ONEDNN_AVAILABLE",
    "Linear",
    "auto_backend",
    "cpu_linear_backend",
    "cpu_vendor",
    "cpuinfo_field",
    "linear",
    "uses_onednn",
]
