"""Exponential moving average of the trained weights (kept in fp32, on the weights' device)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.contiguous() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, t in state.items():
            self.shadow[name].copy_(t)
