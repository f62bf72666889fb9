"""Per-module caches keyed by (block, module): the storage the module-level policies share.

Module outputs are cached before their adaLN gate, so a reused output is re-gated with the current
step's conditioning (shared/reference/caching-methods.md §8, pitfall 4). Keys: "attn" (double
block, a pair (img, txt) after `proj`), "img_mlp" / "txt_mlp" (double block), "out" (single block,
linear2 output).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vidcli.sampling.cache.cost import BlockCost
from vidcli.sampling.cache.hooks import ComputeHook, single_output

Value = torch.Tensor | tuple[torch.Tensor, ...]
Key = tuple[int, str]


class ModuleHook(ComputeHook):
    """A block hook that asks `provide(key, compute)` for each module output.

    `provide` returns either `compute()` (work counted) or a value of its own (reuse, forecast).
    """

    def __init__(self, index: int, provide: Callable[[Key, Callable[[], Value]], Value]):
        super().__init__()
        self.index, self.provide = index, provide

    def _counted(
        self, share: Callable[[BlockCost], float], fn: Callable[[], Value]
    ) -> Callable[[], Value]:
        def compute() -> Value:
            self.work += share(self.cost)
            return fn()

        return compute

    def attention(self, block, img_in, txt_in, cos, sin):
        fn = self._counted(
            lambda c: c.double_attention, lambda: block.attention(img_in, txt_in, cos, sin)
        )
        return self.provide((self.index, "attn"), fn)

    def mlp(self, block, stream, x):
        module = getattr(block, f"{stream}_mlp")
        fn = self._counted(lambda c: getattr(c, f"{stream}_mlp"), lambda: module(x))
        return self.provide((self.index, f"{stream}_mlp"), fn)

    def single(self, block, x_mod, cos, sin):
        fn = self._counted(lambda c: 1.0, lambda: single_output(block, x_mod, cos, sin))
        return self.provide((self.index, "out"), fn)


def module_types(key: Key, depth: int) -> str:
    """The SmoothCache type of a module: "double.attn", "double.img_mlp", ..., "single.out"."""
    index, name = key
    return f"{'double' if index < depth else 'single'}.{name}"


def map_value(fn: Callable[..., torch.Tensor], *values: Value) -> Value:
    """Apply fn elementwise over tensors or equal-length tuples of tensors."""
    if isinstance(values[0], tuple):
        return tuple(fn(*parts) for parts in zip(*values, strict=True))
    return fn(*values)
