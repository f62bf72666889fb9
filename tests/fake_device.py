"""A second device on a CPU-only machine, for catching a missing `.to(device)` without a GPU.

`FAKE_DEVICE` is `cpu:0`: real CPU memory, but a device that compares unequal to the plain `cpu`
every tensor starts on. Inside `fake_device()`, a tensor moved there (`.to(FAKE_DEVICE)`, or
created with `device=FAKE_DEVICE`) becomes an `OnFakeDevice` tensor that reports
`device == FAKE_DEVICE`, and every tensor computed from it does too; `.cpu()` or `.to("cpu")`
bring it back. A tensor that never went through such a move keeps reporting `cpu`, as a
forgotten batch or noise tensor would stay in host memory on a CUDA run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

FAKE_DEVICE = torch.device("cpu", 0)
_MOVES = ("to", "cuda", "cpu")


def _target(func, args, kwargs) -> torch.device | None:
    """The device a `Tensor.to` / `.cuda` / `.cpu` call moves to (None: a dtype-only cast)."""
    name = getattr(func, "__name__", "")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        return FAKE_DEVICE
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            return torch.device(value)
        if isinstance(value, torch.Tensor):
            return value.device
    return None


class OnFakeDevice(torch.Tensor):
    """A CPU tensor that lives on `FAKE_DEVICE` as far as vidcli can tell."""

    @property
    def device(self) -> torch.device:
        return FAKE_DEVICE

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = _target(func, args, kwargs) if name in _MOVES else None
        if name == "cuda":  # there is no CUDA here: stay on the fake device
            func, args, kwargs = torch.Tensor.to, (args[0], FAKE_DEVICE), {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        if target is not None and target != FAKE_DEVICE:
            return out.as_subclass(torch.Tensor)  # moved back to the host
        return torch._tensor._convert(out, cls)


class _FakeDeviceMode(TorchFunctionMode):
    """Tensors created with `device=FAKE_DEVICE` or moved there become `OnFakeDevice`."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        placed = kwargs.get("device") is not None and torch.device(kwargs["device"]) == FAKE_DEVICE
        moved = name in _MOVES and _target(func, args, kwargs) == FAKE_DEVICE
        if name == "cuda":
            func, args, kwargs = torch.Tensor.to, (args[0], FAKE_DEVICE), {}
        out = func(*args, **kwargs)
        if (placed or moved) and isinstance(out, torch.Tensor):
            return out if isinstance(out, OnFakeDevice) else out.as_subclass(OnFakeDevice)
        return out


@contextlib.contextmanager
def fake_device() -> Iterator[torch.device]:
    """Inside, `FAKE_DEVICE` behaves as a second device; yields it."""
    with _FakeDeviceMode():
        yield FAKE_DEVICE


def assert_inputs_on(module: torch.nn.Module, device_of) -> None:
    """A forward pre-hook on `module`: every tensor argument must be on `device_of()`."""

    def check(mod, args, kwargs):
        expected = device_of()
        named = [(f"arg {i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        wrong = [
            f"{name} {tuple(t.shape)} on {t.device}"
            for name, t in named
            if isinstance(t, torch.Tensor) and t.device != expected
        ]
        assert not wrong, (
            f"inputs of {type(mod).__name__} not on the engine's device {expected}: "
            + (", ".join(wrong))
        )

    module.register_forward_pre_hook(check, with_kwargs=True)
