"""The DC-AE's fast paths equal the plain formulations they replace (issue 24).

Each lever is checked against the straightforward PyTorch it stands for: the transposed-conv
upsample against nearest upsampling + conv, the channels-last RMSNorm against its definition,
the oneDNN 1 x 1 conv against `F.conv2d` in float64, the one-pass down/up shortcuts against
the generic rearrangements, and the in-place residual sum (inference only) against the
autograd path. End-to-end equality
with the reference vectors and diffusers stays in test_dcae.py / test_dcae_diffusers.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from vidcli.models.dcae import AE_PRESETS, DCAE, blocks
from vidcli.models.dcae.blocks import (
    PointwiseConv2d,
    RMSNorm,
    average_channels,
    channel_to_space,
    channels_last,
    duplicate_channels,
    pooled_space_to_channel,
    repeated_channel_to_space,
    space_to_channel,
    upsample_conv,
)


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
    monkeypatch.setattr(blocks, "upsample_conv", lambda *a, **k: calls.append(a) or a[0])
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
    with torch.no_grad():  # the inference path scales its own fp32 copy in place
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


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_pointwise_conv_takes_onednn_and_matches_conv2d(monkeypatch, groups, layout):
    torch.manual_seed(0)
    conv = PointwiseConv2d(8, 12, 1, groups=groups, bias=groups == 1)
    x = torch.randn(2, 8, 8, 9)
    if layout == "channels_last":
        x = channels_last(x)
    b = None if conv.bias is None else conv.bias.double()
    want = F.conv2d(x.double(), conv.weight.double(), b, groups=groups)
    calls = []
    onednn = torch.mkldnn_convolution
    monkeypatch.setattr(torch, "mkldnn_convolution", lambda *a: calls.append(1) or onednn(*a))
    with torch.no_grad():
        got = conv(x)
    fast = 1 if torch.backends.mkldnn.is_available() else 0
    assert len(calls) == fast
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    # autograd and other dtypes keep nn.Conv2d's path
    assert conv(x).requires_grad and len(calls) == fast
    with torch.no_grad():
        conv.to(torch.float64)(x.double())
        conv.float()(x[:, :, :4, :4])  # below 8 x 8 positions only grouped convs take oneDNN
    assert len(calls) == fast * (2 if groups > 1 else 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [4, 6])
def test_one_pass_shortcuts_equal_the_generic_rearrangements(dtype, channels):
    torch.manual_seed(0)
    x = channels_last(torch.randn(2, channels, 6, 10).to(dtype))
    plain = x.contiguous()
    for g in (1, 2, 4):
        c_out = 4 * channels // g
        want = average_channels(space_to_channel(plain, temporal=False), c_out)
        got = pooled_space_to_channel(x, c_out)
        assert got.is_contiguous(memory_format=torch.channels_last)
        # g = 4 sums the 2 x 2 cell pairwise where mean() sums it in order: one rounding apart
        tol = 0 if g < 4 else (1e-6 if dtype == torch.float32 else 1e-2)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        assert torch.equal(blocks.DownShortcut(c_out, temporal=False)(x), got)
    for r in (1, 2, 4):
        c_out = r * channels // 4
        if c_out * 4 != r * channels:
            continue
        want = channel_to_space(duplicate_channels(plain, 4 * c_out), temporal=False)
        got = repeated_channel_to_space(x, c_out)
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(got, want)
        assert torch.equal(blocks.UpShortcut(c_out, temporal=False)(x), got)


def test_channels_last_attention_equals_channels_first():
    """The positions-major linear attention (channels-last maps) against the padded-ones form."""
    torch.manual_seed(0)
    attn = blocks.LiteMLA(2, 64, 16, (5,), "rms_norm")
    qkv = torch.randn(2, 2 * 3 * 64, 6, 10)
    want = attn.attend(qkv.double()).double()  # fp32 math inside either way
    got = attn.attend(channels_last(qkv))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert attn.attend(qkv).is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_pointwise_conv_bf16_linear_path_matches_conv2d():
    torch.manual_seed(0)
    conv = PointwiseConv2d(16, 24, 1).to(torch.bfloat16)
    x = channels_last(torch.randn(2, 16, 5, 7).to(torch.bfloat16))
    b = conv.bias.double()
    want = F.conv2d(x.double(), conv.weight.double(), b)
    with torch.no_grad():
        got = conv(x)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-2)
    conv_path = F.conv2d(x, conv.weight, conv.bias).double()  # bf16 rounding apart at most
    torch.testing.assert_close(got.double(), conv_path, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_image_dcae_compiles_as_one_graph(monkeypatch, dtype):
    """The fast paths stay traceable: torch.compile(fullgraph=True) sees no graph break."""
    cfg = dataclasses.replace(
        AE_PRESETS["dc-ae-tiny"],
        is_video=False,
        temporal_downsample=(False,) * 6,
        temporal_upsample=(False,) * 6,
    )
    ae = DCAE(cfg).eval().to(dtype)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).to(dtype)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled_enc = torch.compile(ae.encoder, backend="eager", fullgraph=True)(x)
        compiled_dec = torch.compile(ae.decoder, backend="eager", fullgraph=True)(compiled_enc)
        # traced code skips the eager-only oneDNN conv + activation fusion (inductor fuses on
        # its own), so the eager reference here does too: same ops, same rounding
        monkeypatch.setattr(blocks, "_fuses_activation", lambda *a: False)
        torch.testing.assert_close(compiled_enc, ae.encoder(x))
        torch.testing.assert_close(compiled_dec, ae.decoder(compiled_enc))


def test_compile_autoencoder_keeps_outputs_and_weights():
    from vidcli.models.dcae.compiled import compile_autoencoder

    cfg = dataclasses.replace(
        AE_PRESETS["dc-ae-tiny"],
        is_video=False,
        temporal_downsample=(False,) * 6,
        temporal_upsample=(False,) * 6,
    )
    torch.manual_seed(0)
    ae = DCAE(cfg).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z, rec = ae.encode(x), ae.decode(ae.encode(x))
    keys = set(ae.state_dict())
    torch._dynamo.reset()
    assert compile_autoencoder(ae, backend="eager") is ae
    assert set(ae.state_dict()) == keys
    counts = []
    with torch.no_grad():
        torch.testing.assert_close(ae.encode(x), z)
        torch.testing.assert_close(ae.decode(z), rec)
        from torch._dynamo.utils import counters

        counts.append(int(counters["stats"]["unique_graphs"]))
        ae.encode(x)  # same shape: no new graph
        counts.append(int(counters["stats"]["unique_graphs"]))
    assert counts[0] >= 2 and counts[1] == counts[0]


def test_up_block_inference_caches_the_transposed_conv_taps():
    """Inference takes the transposed conv from 8 x 8 inputs up with its taps derived once,
    and derives them again after the weight changes (in-place update or dtype)."""
    torch.manual_seed(0)
    up = blocks.UpMain(2, 16, 8, "interpolate", temporal=False)
    x = channels_last(torch.randn(1, 16, 8, 8))
    conv = up.conv.conv
    with torch.no_grad():
        want = F.conv2d(
            F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, conv.bias, 1, 1
        )
        torch.testing.assert_close(up(x), want, rtol=1e-5, atol=1e-5)
        taps = up._taps
        assert taps is not None
        up(x)
        assert up._taps is taps  # reused, not derived again
        conv.weight.mul_(2)  # bumps the version counter
        want2 = F.conv2d(
            F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, conv.bias, 1, 1
        )
        torch.testing.assert_close(up(x), want2, rtol=1e-5, atol=1e-5)
        assert up._taps is not taps
        up.to(torch.bfloat16)
        got = up(x.bfloat16())
        assert up._taps.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want2, rtol=2e-2, atol=2e-2)
    # below 8 x 8 inputs inference keeps nearest upsampling + conv (oneDNN's fixed cost)
    tiny = blocks.UpMain(2, 16, 8, "interpolate", temporal=False)
    with torch.no_grad():
        tiny(channels_last(torch.randn(1, 16, 4, 4)))
    assert tiny._taps is None
    # off the CPU (here meta, as the memory plan traces it) inference keeps the memory rule
    off_cpu = blocks.UpMain(2, 16, 8, "interpolate", temporal=False).to("meta")
    with torch.no_grad():
        y = off_cpu(torch.empty(1, 16, 8, 8, device="meta"))
    assert y.shape == (1, 8, 16, 16) and off_cpu._taps is None
    # autograd derives per call (the taps must stay in the graph) and keeps no cache
    up2 = blocks.UpMain(2, 16, 8, "interpolate", temporal=False)
    y = up2(channels_last(torch.randn(1, 16, 8, 8)))
    assert y.requires_grad and up2._taps is None


@pytest.mark.parametrize("act", ["silu", "relu"])
@pytest.mark.parametrize("kernel,groups", [(3, 1), (3, 8), (1, 1)])
def test_bf16_conv_activation_fuses_in_onednn_and_matches(monkeypatch, act, kernel, groups):
    """bf16 inference on channels-last maps applies the activation inside the oneDNN conv:
    within bf16 rounding of the two-step path and no farther from the float64 result."""
    torch.manual_seed(0)
    layer = blocks.ConvLayer(2, 8, 16, kernel=kernel, groups=groups, act=act).to(torch.bfloat16)
    x = channels_last(torch.randn(2, 8, 32, 33).to(torch.bfloat16))
    calls = []
    fused = blocks.conv_act_onednn
    monkeypatch.setattr(blocks, "conv_act_onednn", lambda *a: calls.append(1) or fused(*a))
    w, b = layer.conv.weight.double(), layer.conv.bias.double()
    pre = F.conv2d(x.double(), w, b, padding=kernel // 2, groups=groups)
    exact = F.silu(pre) if act == "silu" else F.relu(pre)
    with torch.no_grad():
        got = layer(x)
        two_step = layer.act(layer.conv(x))
    assert len(calls) == int(torch.backends.mkldnn.is_available())
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.double(), two_step.double(), rtol=2e-2, atol=2e-2)
    err = (got.double() - exact).norm() / exact.norm()
    assert err <= (two_step.double() - exact).norm() / exact.norm() * 1.05 + 1e-6
    # autograd, fp32, channels-first and small maps keep the two-step path
    layer(x)
    with torch.no_grad():
        layer(x[:, :, :16])
        layer.float()(x.float())
        layer.to(torch.bfloat16)(x.contiguous())
    assert len(calls) == int(torch.backends.mkldnn.is_available())


def test_bf16_attention_inference_path_equals_fp32_math_and_keeps_its_input():
    """bf16 inference rectifies q and k in place on its own fp32 copy: same numbers as the
    fp32 path on the same values, and the caller's qkv map stays as it was."""
    torch.manual_seed(0)
    attn = blocks.LiteMLA(2, 64, 16, (5,), "rms_norm")
    qkv = channels_last(torch.randn(2, 2 * 3 * 64, 6, 10).bfloat16())
    before = qkv.clone()
    want = attn.attend(qkv.float())
    with torch.no_grad():
        got = attn.attend(qkv)
    assert torch.equal(qkv, before)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_in_place_inference_path_equals_forward(dtype):
    """`overwrite=True` (a conv's fresh output, inference) normalises in row blocks into x's
    own storage: bit-identical to the allocating path, across block boundaries too."""
    torch.manual_seed(0)
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm = norm.to(dtype)
    x = channels_last((torch.randn(2, 32, 96, 100) * 3).to(dtype))  # 19,200 rows: 3 blocks
    with torch.no_grad():
        want = norm(x)
        y = x.clone()
        got = norm(y, overwrite=True)
    assert got.data_ptr() == y.data_ptr()
    assert torch.equal(got, want)
    # autograd and channels-first maps keep the allocating path and leave x alone
    z = x.clone()
    norm(z, overwrite=True)
    assert torch.equal(z, x)
    with torch.no_grad():
        c = x.contiguous()
        norm(c, overwrite=True)
    assert torch.equal(c, x.contiguous())
