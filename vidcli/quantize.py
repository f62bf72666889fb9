"""Quantized inference (`[sample] quantize`, `generate --quantize`): the DiT's linear layers hold
int8 or fp8 weights through torchao (the optional `quant` extra).

- `int8-wo`: int8 weights with one fp32 scale and int8 zero point per output row, dequantized to
  the compute dtype inside each matmul (weight-only); any device. It saves memory, not time.
- `fp8`: torchao's float8 dynamic quantization with per-row scales (`fp8dqrow`): float8 e4m3
  weights with one fp32 scale per output row, and each call's activations quantized to e4m3
  per row, so the matmul itself runs in fp8 (`torch._scaled_mm`). CUDA at SM 8.9 or newer
  (Ada, Hopper), bf16 weights only. It pays under `--compile`, where inductor fuses each
  activation's quantization (row max, scale, cast) with its neighbours; eagerly every linear
  adds those passes, so a run without compile logs a hint (it is not refused: it still halves
  the weights).

A quantized DiT is quantized where it computes, after placement, and never moves again: torchao's
weights cannot be swapped by `module.to` under inference mode, so a run with `quantize` keeps
every model resident (the compatibility table refuses offload `model` and `blocks`).

Some linears stay in the compute dtype (`quantizes`):
- int8-wo, an input width not a multiple of 16: under `torch.compile` inductor turns a bf16 int8-wo
  linear into `aten._weight_int8pack_mm`, whose CPU kernel crashes (SIGSEGV) at such widths. In
  the MMDiT that is the condition embedder `cond_in` alone ((C + 1)·p² inputs: 68 on the demo
  and the 11B), a few KB.
- fp8, an input or output width not a multiple of 16: `_scaled_mm` needs both, and torchao
  (`torchao.quantization.utils._fp8_mm_compat`) silently keeps such a weight as it is; the memory
  plan counts the same layers. In the MMDiT, `cond_in` again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from vidcli.devices import dtype_name
from vidcli.errors import UsageError

if TYPE_CHECKING:
    from torchao.core.config import AOBaseConfig

QUANTIZE_MODES = ("none", "int8-wo", "fp8")
INT8_PACK_K = 16
"""int8-wo quantizes a linear only if its in_features is a multiple of this: torch 2.13's CPU
`_weight_int8pack_mm` crashed for every other width tried (2, 4, 8, 12, 20, 24, 36, 68; 16, 48,
80, 384, 400 and 1040 ran)."""
FP8_MM_MULTIPLE = 16
"""fp8 quantizes a linear only if its in_features and out_features are multiples of this: the
widths `torch._scaled_mm` takes, and torchao's own filter (`_fp8_mm_compat`)."""
FP8_CAPABILITY = (8, 9)
"""The oldest CUDA compute capability with fp8 matmuls (Ada, Hopper); torchao asserts it too."""
INSTALL_HINT = 'pip install -e ".[quant]"'

log = logging.getLogger(__name__)


def scale_bytes_per_row(mode: str) -> int:
    """Bytes besides the 1-byte weights per output row of a quantized linear layer."""
    return {"int8-wo": 4 + 1, "fp8": 4}[mode]  # fp32 scale (+ int8 zero point)


def fp8_without_compile_hint(mode: str, compile_mode: str) -> str | None:
    """The one-line hint for fp8 run eagerly (not refused: it runs, only slower than it could)."""
    if mode != "fp8" or compile_mode != "off":
        return None
    return (
        "--quantize fp8 without --compile: each linear quantizes its activations in a separate "
        "pass, which only a compiled DiT fuses away; add --compile for fp8's speed"
    )


def check_quantize(
    mode: str, device: torch.device, dtype: torch.dtype, compile_mode: str = "off"
) -> None:
    """UsageError (exit 2) when `mode` cannot run on `device` in compute `dtype` or torchao is not
    installed; logs a hint when fp8 runs without `torch.compile` (`compile_mode`, `[sample]
    compile`)."""
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
        if dtype != torch.bfloat16:
            raise UsageError(
                f"--quantize fp8 quantizes bf16 weights only (torchao's per-row fp8), not "
                f"{dtype_name(dtype)}; use --dtype bf16"
            )
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise UsageError(f"--quantize {mode} needs torchao: {INSTALL_HINT}") from None
    hint = fp8_without_compile_hint(mode, compile_mode)
    if hint:
        log.info(hint)


def quantizes(child: nn.Module, mode: str) -> bool:
    """Whether `mode` quantizes `child`: a linear layer whose in_features is a multiple of
    `INT8_PACK_K` (int8-wo), or whose in_ and out_features are multiples of `FP8_MM_MULTIPLE`
    (fp8)."""
    if mode == "none" or not isinstance(child, nn.Linear):
        return False
    if mode == "int8-wo":
        return child.in_features % INT8_PACK_K == 0
    return child.in_features % FP8_MM_MULTIPLE == 0 and child.out_features % FP8_MM_MULTIPLE == 0


def quantize_config(mode: str) -> AOBaseConfig:
    """torchao's config for `mode` ("int8-wo" or "fp8"; needs torchao).

    `set_inductor_config=False`: otherwise torchao turns on inductor's coordinate-descent
    autotuning process-wide at quantization time, so a quantized run would compile (slower) under
    other settings than the bf16 run it is compared with."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    if mode == "int8-wo":
        return Int8WeightOnlyConfig(set_inductor_config=False)
    if mode == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False
        )
    raise ValueError(f"no torchao config for quantize mode {mode!r}")


def quantize_linears(module: nn.Module, mode: str) -> nn.Module:
    """Quantize `module`'s linear layers in place (where their weights are now); returns it."""
    if mode == "none":
        return module
    from torchao.quantization import quantize_

    quantize_(module, quantize_config(mode), filter_fn=lambda child, _name: quantizes(child, mode))
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
