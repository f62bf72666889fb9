"""The DC-AE's fast paths equal the plain formulations they replace (issue 24).

Each lever is checked against the straightforward PyTorch it stands for: the transposed-conv
upsample against nearest upsampling + conv, the channels-last RMSNorm against its definition,
and the in-place residual sum (inference only) against the autograd path. End-to-end equality
with the reference vectors and diffusers stays in test_dcae.py / test_dcae_diffusers.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidcli.models.dcae import AE_PRESETS, DCAE, blocks
from vidcli.models.dcae.blocks import RMSNorm, upsample_conv


def test_upsample_conv_equals_nearest_upsample_then_conv():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    want = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    got = upsample_conv(x.float(), w.float(), b.float()).double()
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * want.abs().max().item())


def test_up_block_takes_the_transposed_conv_only_where_it_saves_memory(monkeypatch):
    """A wide low-resolution 2-D up block and every 3-D one keep nearest upsampling + conv."""
    calls = []
    monkeypatch.setattr(blocks, "upsample_conv", lambda *a: calls.append(a) or a[0])
    wide = blocks.UpMain(2, 256, 256, "interpolate", temporal=False)
    wide(torch.randn(1, 256, 4, 4))
    blocks.UpMain(3, 8, 8, "interpolate", temporal=True)(torch.randn(1, 8, 2, 16, 16))
    assert not calls
    blocks.UpMain(2, 8, 8, "interpolate", temporal=False)(torch.randn(1, 8, 16, 16))
    assert len(calls) == 1


def test_upsample_conv_bf16_close_and_gradients_match():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 6, requires_grad=True)
    w = torch.randn(3, 8, 3, 3, requires_grad=True)
    want = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, None, padding=1)
    got = upsample_conv(x, w, None)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    gx, gw = torch.autograd.grad(want, (x, w), g)
    hx, hw = torch.autograd.grad(got, (x, w), g)
    torch.testing.assert_close(hx, gx, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hw, gw, rtol=1e-5, atol=1e-4)
    low = upsample_conv(x.detach().bfloat16(), w.detach().bfloat16(), None).float()
    assert ((low - want).norm() / want.norm()).item() < 1e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_definition(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.to(dtype)
    x = (torch.randn(2, 16, 3, 5, 4) * 3).to(dtype)
    xf = x.float()
    y = (xf * torch.rsqrt(xf.square().mean(dim=1, keepdim=True) + norm.eps)).to(dtype)
    shape = (1, -1, 1, 1, 1)
    want = (y * norm.weight.view(shape) + norm.bias.view(shape)).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(norm(x), want, rtol=tol, atol=tol)


def test_inference_path_equals_autograd_path():
    """The in-place residual sums (no autograd) give the same video as the autograd path."""
    torch.manual_seed(0)
    ae = DCAE(AE_PRESETS["dc-ae-tiny"]).eval()
    x = torch.rand(1, 3, 4, 64, 64) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        rec = ae.decode(z)
    z_grad = ae.encode(x)
    rec_grad = ae.decode(z_grad)
    assert z_grad.requires_grad
    torch.testing.assert_close(z, z_grad.detach(), rtol=0, atol=0)
    torch.testing.assert_close(rec, rec_grad.detach(), rtol=0, atol=0)
