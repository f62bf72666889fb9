"""Where every model and tensor of a sampling run lives, and in which dtype: decided once, here.

A run computes on one device (`--device`: cpu, cuda or cuda:N, the index kept everywhere) in one
compute dtype (`--dtype`). The memory plan's offload mode says which models wait in host memory
outside their phase (text -> t2i -> sample -> decode):

- `none`: every model stays on the device for the whole run;
- `model`: only the current phase's models are on the device;
- `blocks`: as `model`, and the DiTs' transformer blocks stream to the device per forward
  (`vidcli.offload.stream_blocks`), the rest of each DiT staying on the device.

`park` (`generate --offload`) also sends the text encoder and the video AE back to the host after
their phase when the plan keeps everything on the device.

Weights: the text encoder and the DiTs hold the compute dtype; the autoencoders keep their fp32
weights and compute under autocast (`autocast`). Checkpoint weights are read into host memory and
copied into the model before it is placed (`place`), so an fp32 EMA never lands on the device.
Inputs made on the host (noise from CPU generators, conditions) move with `to_device`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from vidcli import devices
from vidcli.errors import UsageError

Role = Literal["text", "t2i_dit", "t2i_ae", "dit", "ae"]
"""The models of a run: text encoder, t2i2v image DiT and its AE, video DiT, video AE."""
ROLES: tuple[str, ...] = get_args(Role)
OFFLOAD_MODES = ("none", "model", "blocks")
HOST = torch.device("cpu")
_AUTOENCODERS = ("ae", "t2i_ae")
_DITS = ("dit", "t2i_dit")
_PARKED = ("text", "ae")


@dataclass(frozen=True)
class Placement:
    """Device, dtype and offload of one run; every move of a model or input asks it."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    """Compute dtype: the DiTs' and text encoder's weights, and autocast's dtype."""
    offload: str = "none"
    """The memory plan's offload: none, model or blocks."""
    park: bool = False
    """`--offload`: the text encoder and video AE go back to the host after their phase."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        if self.offload not in OFFLOAD_MODES:
            raise UsageError(f"offload {self.offload!r}: choose one of {', '.join(OFFLOAD_MODES)}")

    @classmethod
    def resolve(
        cls,
        device: str | None = None,
        dtype: str | None = None,
        offload: str = "none",
        park: bool = False,
    ) -> Placement:
        """From `--device` / `--dtype` (None: CUDA when available; bf16 there, fp32 on CPU)."""
        where = devices.resolve_device(device)
        return cls(where, devices.resolve_dtype(dtype, where), offload, park)

    def weights_dtype(self, role: Role) -> torch.dtype:
        """The dtype of `role`'s weights: fp32 for the autoencoders, the compute dtype otherwise."""
        return torch.float32 if role in _AUTOENCODERS else self.dtype

    def streamed(self, role: Role) -> bool:
        """True when `role`'s transformer blocks stream to the device one forward at a time."""
        return self.offload == "blocks" and role in _DITS

    def resident(self, role: Role) -> bool:
        """True when `role` stays on the device between its phases."""
        return self.offload == "none" and not (self.park and role in _PARKED)

    def home(self, role: Role) -> torch.device:
        """Where `role` waits outside its phase: the device when resident, else the host."""
        return self.device if self.resident(role) else HOST

    def place(self, module: nn.Module, role: Role) -> nn.Module:
        """Cast a freshly loaded model to its dtype and move it home (or set up block streaming).

        Call once, after every weight (EMA, checkpoint) has been loaded into it on the host.
        """
        from vidcli.offload import stream_blocks

        module.to(dtype=self.weights_dtype(role))
        if self.streamed(role):
            stream_blocks(module, self.device)
        else:
            module.to(self.home(role))
        return module

    def enter(self, module: nn.Module, role: Role) -> nn.Module:
        """`role`'s phase begins: the model on the device (a streaming DiT moves its own blocks).

        A model already there is not moved: a quantized DiT's torchao weights cannot be swapped
        by `module.to` under inference mode (`vidcli.quantize`).
        """
        if not self.streamed(role) and not on_device(module, self.device):
            module.to(self.device)
        return module

    def leave(self, module: nn.Module, role: Role) -> None:
        """`role`'s phase ends: back to the host unless it is resident."""
        if not self.resident(role) and not self.streamed(role):
            module.to(HOST)

    @contextlib.contextmanager
    def on_device(self, **models: nn.Module) -> Iterator[None]:
        """One phase: the models (keyword = role) on the device inside, each home again after."""
        unknown = set(models) - set(ROLES)
        if unknown:
            raise ValueError(f"no placement role {sorted(unknown)}; roles: {', '.join(ROLES)}")
        for role, module in models.items():
            self.enter(module, role)  # type: ignore[arg-type]
        try:
            yield
        finally:
            for role, module in models.items():
                self.leave(module, role)  # type: ignore[arg-type]

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """An input made on the host (noise, embeddings, a condition) on the compute device."""
        return tensor.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on this device for a low-precision compute dtype (no-op for fp32)."""
        return devices.autocast(self.device, self.dtype)

    @property
    def name(self) -> str:
        """The device as `--device` spells it: cpu, cuda:0, cuda:1, ..."""
        return str(self.device)


def on_device(module: nn.Module, device: torch.device) -> bool:
    """True when every parameter and buffer of `module` is on `device` (`cuda`: any index)."""
    return all(
        t.device.type == device.type and device.index in (None, t.device.index)
        for t in [*module.parameters(), *module.buffers()]
    )
