"""`torch.compile` for the MMDiT: its repeated blocks (regional) or its whole forward.

Modes (`[sample] compile`, `[train] compile`, `--compile`):
- "blocks": regional compilation, as diffusers' `compile_repeated_blocks`: one `torch.compile` of
  each block class's `forward`, called by every instance of that class, so identical blocks share
  one graph and compile time does not grow with depth.
- "forward": `MMDiT.forward` (embedders, every block, head) as one graph. On a small DiT each
  block's guard check and the Python between blocks cost as much as the arithmetic; one graph
  checks its guards once per call and lets inductor fuse across blocks.

The compiled callables are instance attributes (`forward`) over the same parameters, so state
dicts, EMA, LoRA merges and DeepSpeed see the module unchanged; they hold the module they were
made for, so copy a DiT before compiling it, never after. Not under ZeRO-3: its hooks gather each
layer's weights inside the forward, which breaks the graph and recompiles it every step, so
train-dit refuses the pair (`vidcli.train.dit.check_compile`). A call runs eagerly instead when
the compiled graph would be wrong or would not apply: a block called with a caching hook
(`vidcli.models.mmdit.hooks`), any call while an attention plan is active (sparse attention,
token merging: their per-step choices live in Python state the graph cannot see), and a
sequence-parallel model. The compatibility table refuses those combinations up front
(`vidcli.sampling.compatibility`); the fallbacks keep direct callers correct.

Shapes follow dynamo's automatic dynamic shapes: a call compiles for its shapes; the first call
with another size of a dimension compiles once more with that dimension symbolic (CFG rows 2 vs
1, bucket token counts, text lengths), and later sizes reuse that graph. Sizes 0 and 1 are always
specialised, so one row (the unguided steps of oscillating CFG) has a graph of its own.
`CompileStats` counts graphs and the seconds spent compiling.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidcli.errors import UsageError
from vidcli.models.mmdit import MMDiT
from vidcli.models.mmdit.layers import DoubleStreamBlock, SingleStreamBlock
from vidcli_kernels.attention import attention_plan

COMPILE_MODES: tuple[str, ...] = ("off", "blocks", "forward")
DEFAULT_MODE = "forward"
"""What `--compile` turns on: the mode measured faster on the demo DiT (docs/benchmarks.md)."""


@dataclass
class CompileStats:
    """What compiling cost so far in this process (dynamo's counters are process-wide)."""

    mode: str
    graphs: int = 0
    """Graphs compiled since `compile_dit` (a recompile adds one)."""
    compile_s: float = 0.0
    """Seconds dynamo and inductor spent compiling them (frontend + backend, forward + backward)."""

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "graphs": self.graphs, "compile_s": round(self.compile_s, 3)}


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_seconds() -> float:
    """Seconds dynamo spent compiling in this process (frames and backward graphs)."""
    from torch._dynamo.utils import calculate_time_spent

    return float(calculate_time_spent().get("total_wall_time", 0.0))


class _Baseline:
    """The process-wide counters at `compile_dit` time, to report this model's share."""

    def __init__(self, mode: str):
        self.mode, self.graphs, self.seconds = mode, compiled_graphs(), compile_seconds()

    def stats(self) -> CompileStats:
        return CompileStats(
            self.mode, compiled_graphs() - self.graphs, compile_seconds() - self.seconds
        )


def compile_dit(
    dit: nn.Module,
    mode: str,
    *,
    freeze: bool = False,
    cpp_wrapper: bool = False,
    backend: str = "inductor",
) -> Callable[[], CompileStats]:
    """Compile `dit` in place for `mode` ("off" changes nothing); returns its stats reader.

    freeze ("forward" only): inductor's `freezing`, the weights folded into the graph as constants
    (linears prepacked on CPU): inference only, and only while the weights do not change.
    cpp_wrapper: inductor calls its kernels from generated C++ rather than Python.
    backend: torch.compile's backend (tests count recompiles with "eager").
    """
    if mode not in COMPILE_MODES:
        raise UsageError(f"compile {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    baseline = _Baseline(mode)
    if mode == "off":
        return baseline.stats
    if compiled_mode(dit) != "off":
        raise UsageError(f"this DiT is already compiled (compile = {compiled_mode(dit)!r})")
    if getattr(dit, "sequence_parallel", None) is not None:
        raise UsageError(
            f"compile = {mode!r} and sequence parallelism cannot be combined: the MMDiT's "
            "all-to-all attention is not compiled"
        )
    if freeze and mode != "forward":
        raise UsageError("freeze folds the weights of one whole forward: use mode 'forward'")
    options = {k: True for k, on in (("freezing", freeze), ("cpp_wrapper", cpp_wrapper)) if on}
    if options and backend != "inductor":
        raise UsageError(f"{', '.join(options)}: inductor options, not for backend {backend!r}")
    if backend == "inductor":
        options.update(INDUCTOR_OPTIONS)

    def compiled(fn: Callable) -> Callable:
        return torch.compile(fn, backend=backend, options=options or None)

    if mode == "blocks":
        blocks = [m for m in dit.modules() if type(m) in _BLOCK_TENSORS]
        if not blocks:
            raise UsageError(f"compile = 'blocks': {type(dit).__name__} has no MMDiT blocks")
        for cls, tensors in _BLOCK_TENSORS.items():
            graph = compiled(cls.forward)  # one per class: every instance calls this one
            for block in blocks:
                if type(block) is cls:
                    block.forward = _block_forward(block, graph, tensors)
    else:
        if not isinstance(dit, MMDiT):
            raise UsageError(f"compile = 'forward' applies to an MMDiT, not {type(dit).__name__}")
        # The bound method, not MMDiT.forward with the model as an argument: freezing folds only
        # the attributes of the module being compiled.
        dit.forward = _model_forward(dit, compiled(dit.forward))
    dit._vidcli_compiled = mode
    return baseline.stats


INDUCTOR_OPTIONS = {"cpp.use_decompose_tanh": True}
"""Inductor settings every compile gets. On CPU, tanh as 2/(1 + exp(-2x)) - 1 rather than
Sleef's tanh: the MMDiT's tanh-GELU kernels run 2.6x faster (1.23x -> 1.28x on the demo's
loop), their largest difference from eager 2.4e-7 -> 4.8e-7. Inductor leaves it off by default
because its relative error near 0 can flip atan2's sign; a GELU multiplies it by x. Only the C++
(CPU) backend reads it."""

_BLOCK_TENSORS = {DoubleStreamBlock: 5, SingleStreamBlock: 4}
"""The repeated block classes and how many tensors their forward takes before `hook`."""


def _block_forward(block: nn.Module, graph: Callable, tensors: int) -> Callable:
    """`block.forward` through the class's compiled graph; eager with a hook or a plan."""
    eager = block.forward

    def forward(*args: Any, hook: Any = None) -> Any:
        if len(args) > tensors:  # the caching runner passes its hook positionally
            args, hook = args[:tensors], args[tensors]
        if hook is not None or attention_plan() is not None or block.sequence_parallel is not None:
            return eager(*args, hook=hook)
        return graph(block, *args)

    return forward


def _model_forward(dit: MMDiT, graph: Callable) -> Callable:
    """`dit.forward` through the compiled graph; eager under an attention plan or SP."""
    eager = dit.forward

    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        if attention_plan() is not None or dit.sequence_parallel is not None:
            return eager(*args, **kwargs)
        return graph(*args, **kwargs)

    return forward


def compiled_mode(dit: nn.Module) -> str:
    """The mode `dit` was compiled with ("off" if never)."""
    return getattr(dit, "_vidcli_compiled", None) or "off"


__all__ = [
    "COMPILE_MODES",
    "DEFAULT_MODE",
    "CompileStats",
    "compile_dit",
    "compile_seconds",
    "compiled_graphs",
    "compiled_mode",
]
