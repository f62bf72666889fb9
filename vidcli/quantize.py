"""Quantized inference (`[sample] quantize`, `generate --quantize`): the DiT's linear layers hold
int8 or fp8 weights through torchao (the optional `quant` extra).

- `int8-wo`: int8 weights with one fp32 scale and int8 zero point per output row, dequantized to
  the compute dtype inside each matmul (weight-only); any device.
- `fp8`: float8 e4m3 weights with per-row scales (weight-only); CUDA at SM 8.9 or newer.

A quantized DiT is quantized where it computes, after placement, and never moves again: torchao's
weights cannot be swapped by `module.to` under inference mode, so a run with `quantize` keeps
every model resident (the compatibility table refuses offload `model` and `blocks`).

int8-wo leaves a linear whose input width is not a multiple of 16 unquantized (`quantizes`): under
`torch.compile` inductor turns a bf16 int8-wo linear into `aten._weight_int8pack_mm`, whose CPU
kernel crashes (SIGSEGV) at such widths. In the MMDiT that is the condition embedder `cond_in`
alone ((C + 1)·p² inputs: 68 on the demo and the 11B), a few KB.
"""

from __future__ import annotations

import torch
from torch import nn

from vidcli.errors import UsageError

QUANTIZE_MODES = ("none", "int8-wo", "fp8")
INT8_PACK_K = 16
"""int8-wo quantizes a linear only if its in_features is a multiple of this: torch 2.13's CPU
`_weight_int8pack_mm` crashed for every other width tried (2, 4, 8, 12, 20, 24, 36, 68; 16, 48,
80, 384, 400 and 1040 ran)."""
FP8_CAPABILITY = (8, 9)
"""The oldest CUDA compute capability with fp8 matmuls (Ada, Hopper)."""
INSTALL_HINT = 'pip install -e ".[quant]"'


def scale_bytes_per_row(mode: str) -> int:
    """Bytes besides the 1-byte weights per output row of a quantized linear layer."""
    return {"int8-wo": 4 + 1, "fp8": 4}[mode]  # fp32 scale (+ int8 zero point)


def check_quantize(mode: str, device: torch.device) -> None:
    """UsageError (exit 2) when `mode` cannot run on `device` or torchao is not installed."""
    if mode not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {mode}: choose one of {', '.join(QUANTIZE_MODES)}")
    if mode == "none":
        return
    if mode == "fp8":
        if device.type != "cuda":
            raise UsageError(
                f"--quantize fp8 needs a CUDA GPU of compute capability 8.9+ (not {device}); "
                "use --quantize int8-wo"
            )
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            raise UsageError(
                f"--quantize fp8 needs compute capability 8.9+ and {device} has "
                f"{capability[0]}.{capability[1]}; use --quantize int8-wo"
            )
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise UsageError(f"--quantize {mode} needs torchao: {INSTALL_HINT}") from None


def quantizes(child: nn.Module, mode: str) -> bool:
    """Whether `mode` quantizes `child`: every linear layer, but for int8-wo only those whose
    in_features is a multiple of `INT8_PACK_K`."""
    if mode == "none" or not isinstance(child, nn.Linear):
        return False
    return mode != "int8-wo" or child.in_features % INT8_PACK_K == 0


def quantize_linears(module: nn.Module, mode: str) -> nn.Module:
    """Quantize `module`'s linear layers in place (where their weights are now); returns it."""
    if mode == "none":
        return module
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if mode == "int8-wo" else Float8WeightOnlyConfig()
    quantize_(module, config, filter_fn=lambda child, _name: quantizes(child, mode))
    return module


def quantized_bytes(module: nn.Module, mode: str, dtype_size: int) -> int:
    """The weight bytes of `module` (a meta model is enough) once its linears are quantized:
    1 B per quantized linear weight plus the per-row scales, `dtype_size` per other parameter."""
    total = sum(p.numel() for p in module.parameters()) * dtype_size
    for child in module.modules():
        if quantizes(child, mode):
            rows, cols = child.weight.shape
            total -= rows * cols * dtype_size
            total += rows * cols + rows * scale_bytes_per_row(mode)
    return total
