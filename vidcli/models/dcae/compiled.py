"""`torch.compile` for a DC-AE's encoder and decoder (inference; issue 24).

`compile_autoencoder(ae)` replaces `ae.encoder.forward` and `ae.decoder.forward` (or those of
`coders`) by compiled callables (instance attributes: parameters, state dict and
`encode`/`decode` stay as they are). Every call runs under inductor's freezing flag, so a call
without autograd treats the weights as constants: inductor prepacks the convolution weights for
oneDNN and fuses bias, activation and residual adds into the convolutions. On the 2-core CPU of
docs/benchmarks.md that made the image DC-AE 1.1x faster than its eager path (256 px, fp32, one
thread) for 47 s of compiling both directions. A call with autograd on compiles an ordinary
(unfrozen) graph.

Frozen weights are baked into the graph: compile after loading weights and placing the model,
and do not change them in place or move the model afterwards (training, LoRA merges, offload to
the host) — build and compile a fresh model instead. A new input size compiles once more
(dynamo's automatic dynamic shapes); tiles of one size share a graph. `compile_stats(ae)` counts
the graphs and seconds the compiled calls spent compiling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vidcli.errors import UsageError
from vidcli.models.dcae.model import DCAE

CODERS = ("encoder", "decoder")


class _FrozenForward:
    """A coder's compiled forward, called under inductor's freezing flag; counts what compiling
    cost inside its calls (dynamo's counters are process-wide: a compiled DiT adds to them too)."""

    def __init__(self, graph: Callable[[Tensor], Tensor]):
        self.graph = graph
        self.graphs = 0
        self.compile_s = 0.0

    def __call__(self, x: Tensor) -> Tensor:
        import torch._inductor.config as inductor_config
        from torch._dynamo.utils import calculate_time_spent, counters

        graphs, seconds = counters["stats"]["unique_graphs"], calculate_time_spent()
        # `options={"freezing": True}` did not freeze in torch 2.13 (plain aten convs in the
        # graph); the config flag, active while dynamo compiles, does.
        # Contiguous: a tile is a view with the whole input's strides, which dynamo guards on;
        # copied (small beside the convolutions), a tile of a size seen before reuses its graph.
        with inductor_config.patch(freezing=True):
            out = self.graph(x.contiguous())
        self.graphs += counters["stats"]["unique_graphs"] - graphs
        self.compile_s += calculate_time_spent()["total_wall_time"] - seconds["total_wall_time"]
        return out


def compile_autoencoder(
    ae: DCAE, backend: str = "inductor", coders: tuple[str, ...] = CODERS
) -> DCAE:
    """Compile `coders` of `ae` in place (see the module docstring); returns `ae`."""
    if not isinstance(ae, DCAE):
        raise UsageError(
            f"compile_ae: the {getattr(ae, 'family', type(ae).__name__)} does not compile; only "
            "the DC-AE family (video and image dc-ae-* models) does"
        )
    unknown = set(coders) - set(CODERS)
    if unknown:
        raise ValueError(f"coders {sorted(unknown)}: choose from {', '.join(CODERS)}")
    for name in coders:
        coder = getattr(ae, name)
        coder.forward = _FrozenForward(torch.compile(coder.forward, backend=backend))
    return ae


def compile_stats(ae: DCAE) -> tuple[int, float]:
    """(graphs, seconds) `ae`'s compiled encoder and decoder have compiled so far."""
    forwards = [getattr(ae, name).forward for name in CODERS]
    compiled = [f for f in forwards if isinstance(f, _FrozenForward)]
    return sum(f.graphs for f in compiled), sum(f.compile_s for f in compiled)
