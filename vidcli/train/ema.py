"""Exponential moving average of the trained weights (kept in fp32, on the weights' device).

Only parameters that train are averaged: a frozen one (requires_grad False, e.g. the base
weights under LoRA) never moves, so its average is itself and no copy of it is kept (an 11B
base model under LoRA would otherwise double its memory for nothing).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class EMA:
    """`shadow = decay * shadow + (1 - decay) * param` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = model
        self.shadow = {
            name: p.detach().float().clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            shadow.lerp_(params[name].detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter's average in fp32 on the CPU: the shadows, and each frozen parameter
        itself (copied off the device one tensor at a time, never all of them on it)."""
        return {
            name: (
                self.shadow[name].cpu().contiguous()
                if name in self.shadow
                else p.detach().to("cpu", torch.float32).contiguous()
            )
            for name, p in self.model.named_parameters()
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the shadows; frozen parameters' entries (the model's own values) are unused."""
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for name, shadow in self.shadow.items():
            shadow.copy_(state[name])

    def load_file(self, path: Path) -> None:
        """`load_state_dict` from a saved `state_dict()`, reading only the averaged tensors."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            stored = set(f.keys())
            self.load_state_dict(
                {name: f.get_tensor(name) for name in self.shadow if name in stored}
            )
