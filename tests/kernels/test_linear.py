"""CPU linears through oneDNN or MKL (vidcli_kernels.linear): same numbers, the right dispatch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidcli_kernels import linear as linear_module
from vidcli_kernels.linear import (
    BACKEND_ENV,
    Linear,
    auto_backend,
    cpu_linear_backend,
    linear,
    uses_onednn,
)

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN"
)


def closed_form(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    out = x.double() @ weight.double().T
    return out if bias is None else out + bias.double()


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).norm() / ref.norm())


@pytest.fixture
def onednn(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "onednn")


@pytest.mark.parametrize("backend", ["onednn", "aten"])
@pytest.mark.parametrize(
    ("shape", "bias"),
    [((2, 80, 256), True), ((160, 1280), True), ((3, 5, 7, 256), False)],
)
def test_linear_equals_the_closed_form(monkeypatch, backend, shape, bias):
    monkeypatch.setenv(BACKEND_ENV, backend)
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(768, shape[-1]) / shape[-1] ** 0.5
    b = torch.randn(768) if bias else None
    with torch.no_grad():
        assert uses_onednn(x, weight, b) == (backend == "onednn")
        out = linear(x, weight, b)
    assert out.shape == (*shape[:-1], 768)
    assert relative_error(out, closed_form(x, weight, b)) < 1e-6


def test_onednn_takes_strided_inputs(onednn):
    torch.manual_seed(1)
    x = torch.randn(80, 2, 256).transpose(0, 1)  # (2, 80, 256), not contiguous
    weight, bias = torch.randn(512, 256) / 16, torch.randn(512)
    with torch.no_grad():
        assert uses_onednn(x, weight, bias)
        out = linear(x, weight, bias)
    assert relative_error(out, closed_form(x, weight, bias)) < 1e-6


def test_dispatch_rule(onednn):
    x, weight = torch.randn(160, 256), torch.randn(1280, 256)
    with torch.no_grad():
        assert uses_onednn(x, weight)
        assert not uses_onednn(x.bfloat16(), weight.bfloat16())  # ATen's bf16 is oneDNN already
        assert not uses_onednn(x[:2], weight)  # 655k MACs, a 2-row GEMV: MKL is faster
    w = nn.Parameter(weight)
    assert uses_onednn(x, w) is False  # autograd needs the weight's gradient
    with torch.no_grad():
        assert uses_onednn(x, w)
    assert uses_onednn(x, weight)  # nothing requires a gradient


def test_autocast_keeps_its_lower_precision(onednn):
    x, weight = torch.randn(160, 256), torch.randn(1280, 256)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, weight)
        out = linear(x, weight)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, torch.nn.functional.linear(x, weight))


def test_weight_subclasses_keep_their_own_dispatch(onednn):
    class Marked(torch.Tensor):
        pass

    x, weight = torch.randn(160, 256), torch.randn(1280, 256).as_subclass(Marked)
    with torch.no_grad():
        assert not uses_onednn(x, weight)
        out = linear(x, weight)
    assert torch.equal(out.as_subclass(torch.Tensor), x @ weight.as_subclass(torch.Tensor).T)


def test_gradients_flow_through_the_aten_path(onednn):
    torch.manual_seed(2)
    layer = Linear(256, 1280)
    x = torch.randn(160, 256, requires_grad=True)
    layer(x).square().sum().backward()
    ref = nn.Linear(256, 1280)
    ref.load_state_dict(layer.state_dict())
    x_ref = x.detach().clone().requires_grad_()
    ref(x_ref).square().sum().backward()
    assert torch.allclose(layer.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_linear_module_is_an_nn_linear():
    layer = Linear(256, 64, bias=False)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(nn.Linear(256, 64, bias=False).state_dict())


@pytest.mark.parametrize(
    ("machine", "vendor", "available", "expected"),
    [
        ("x86_64", "AuthenticAMD", True, "onednn"),
        ("AMD64", "HygonGenuine", True, "onednn"),
        ("x86_64", "GenuineIntel", False, "aten"),
        ("x86_64", "GenuineIntel", True, "aten"),
        ("x86_64", "", True, "aten"),
        ("x86_64", "AuthenticAMD", False, "aten"),
        ("aarch64", "", True, "aten"),
    ],
)
def test_auto_picks_onednn_where_mkl_runs_its_avx2_path(machine, vendor, available, expected):
    assert auto_backend(machine, vendor, available) == expected


def test_auto_is_this_machines_choice(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    vendor = linear_module.cpu_vendor()
    assert cpu_linear_backend() == auto_backend(
        linear_module.platform.machine(), vendor, torch.backends.mkldnn.is_available()
    )


def test_unknown_backend_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "blas")
    with pytest.raises(ValueError, match=r"VIDCLI_CPU_LINEAR='blas': choose one of auto, onednn"):
        cpu_linear_backend()


def test_forcing_onednn_without_it_is_refused(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "onednn")
    monkeypatch.setattr(linear_module, "ONEDNN_AVAILABLE", False)
    with pytest.raises(ValueError, match="this torch build has no oneDNN; use aten"):
        cpu_linear_backend()


def test_compiled_graph_calls_onednn_and_matches_eager(onednn, fresh_dynamo):
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(3)
    model = nn.Sequential(Linear(256, 1024), nn.GELU(approximate="tanh"), Linear(1024, 256))
    targets: list[str] = []

    def record(gm: torch.fx.GraphModule, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    x = torch.randn(2, 80, 256)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model, backend=record)(x)
        inductor = torch.compile(model)(x)
    assert targets.count("vidcli.onednn_linear") == 2
    assert sum(counters["graph_break"].values()) == 0
    assert torch.equal(compiled, eager)
    assert relative_error(inductor, eager.double()) < 1e-6
