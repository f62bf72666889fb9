"""`torch.compile` for a DC-AE's encoder and decoder (inference; issue 24).

`compile_autoencoder(ae)` replaces `ae.encoder.forward` and `ae.decoder.forward` by compiled
callables (instance attributes: parameters, state dict and `encode`/`decode` stay as they
are). Every call runs under inductor's freezing flag, so a call without autograd treats the
weights as constants: inductor prepacks the convolution weights for oneDNN and fuses bias,
activation and residual adds into the convolutions. On the 2-core CPU of docs/benchmarks.md
that made the image DC-AE 1.1x faster than its eager path (256 px, fp32, one thread) for 47 s
of compiling both directions. A call with autograd on compiles an ordinary (unfrozen) graph.

Frozen weights are baked into the graph: compile after loading weights, and do not change
them in place afterwards (training, LoRA merges) — build and compile a fresh model instead.
A new input size compiles once more (dynamo's automatic dynamic shapes); tiles of one size
share a graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vidcli.models.dcae.model import DCAE


def compile_autoencoder(ae: DCAE, backend: str = "inductor") -> DCAE:
    """Compile `ae.encoder` and `ae.decoder` in place (see the module docstring); returns `ae`."""
    import torch._inductor.config as inductor_config

    for coder in (ae.encoder, ae.decoder):
        graph = torch.compile(coder.forward, backend=backend)

        def forward(x: Tensor, _graph: Callable[[Tensor], Tensor] = graph) -> Tensor:
            # `options={"freezing": True}` did not freeze in torch 2.13 (plain aten convs in
            # the graph); the config flag, active while dynamo compiles, does.
            with inductor_config.patch(freezing=True):
                return _graph(x)

        coder.forward = forward
    return ae
