"""Catching device and dtype mistakes without a GPU.

`strict_devices()`: inside, an op fails as CUDA would when its tensors sit on different devices
(a CPU scalar, a move or a copy excepted), and a matrix product or convolution fails when its
floating inputs differ in dtype outside autocast. Plain PyTorch on the CPU accepts some of these
(a `meta` weight times a CPU input returns a CPU tensor), so without this a model left on the
host, or an input never moved, goes unnoticed on a CPU-only machine. Pair it with a second
device that needs no GPU: `meta` for models and shapes (no data, so no data-dependent control
flow), bf16 on the CPU for dtypes.

`fake_device()`: a second device with real data for runs that need it (train-dit computes a
loss), for tensors only: `FAKE_DEVICE` is `cpu:0`, a device that compares unequal to the plain
`cpu` every tensor starts on. A tensor moved there (`.to(FAKE_DEVICE)`, `device=FAKE_DEVICE`)
becomes an `OnFakeDevice` tensor that reports `device == FAKE_DEVICE`, and so does every tensor
computed from it; `.cpu()` brings it back. `assert_inputs_on` then fails a forward whose inputs
were never moved.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

FAKE_DEVICE = torch.device("cpu", 0)
_MOVES = ("to", "cuda", "cpu")

# Ops that may take tensors from several devices: moves and copies between devices, and
# indexing, which CUDA allows with host index tensors.
_CROSS_DEVICE = {
    "to",
    "cpu",
    "cuda",
    "copy_",
    "__getitem__",
    "__setitem__",
    "__set__",
    "__get__",
    "_has_compatible_shallow_copy_type",
}
# Ops whose floating inputs must share a dtype on CUDA (outside autocast).
_SAME_DTYPE = {
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.einsum,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
    torch.Tensor.mm,
    torch.Tensor.bmm,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.scaled_dot_product_attention,
}


class MixedDevicesError(RuntimeError):
    """An op received tensors a real device would refuse together."""


def _tensors(args, kwargs) -> list[torch.Tensor]:
    leaves, _ = tree_flatten((args, kwargs))
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def check_op(func, args, kwargs) -> None:
    """Raise `MixedDevicesError` if `func(*args, **kwargs)` would fail on a real device."""
    name = getattr(func, "__name__", "")
    tensors = _tensors(args, kwargs)
    if name not in _CROSS_DEVICE:
        # A 0-dim CPU tensor is a scalar to CUDA kernels, allowed beside any device.
        placed = {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(placed) > 1:
            shapes = ", ".join(f"{tuple(t.shape)} on {t.device}" for t in tensors)
            raise MixedDevicesError(
                f"{name or func} got tensors on {sorted(map(str, placed))}: {shapes}"
            )
    if func in _SAME_DTYPE:
        floating = [t for t in tensors if t.is_floating_point()]
        device = floating[0].device.type if floating else "cpu"
        autocast = device in ("cpu", "cuda") and torch.is_autocast_enabled(device)
        dtypes = {t.dtype for t in floating}
        if len(dtypes) > 1 and not autocast:
            raise MixedDevicesError(
                f"{name or func} got floating dtypes {sorted(map(str, dtypes))}"
            )


class _Strict(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        check_op(func, args, kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def strict_devices() -> Iterator[None]:
    """Inside, ops that mix devices (or dtypes, for products) raise `MixedDevicesError`."""
    with _Strict():
        yield


def module_devices(module: torch.nn.Module) -> set[torch.device]:
    """Every device `module`'s parameters and buffers are on."""
    return {t.device for t in (*module.parameters(), *module.buffers())}


# ---------------------------------------------------------------------------------------------
# A second device with real data, for tensors


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
    """Inside, `FAKE_DEVICE` behaves as a second device for tensors; yields it."""
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
