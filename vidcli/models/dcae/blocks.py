"""DC-AE building blocks: residual-autoencoding rearrangements, norms, convolutions, the
EfficientViT linear-attention block, and the down/up sampling blocks with their shortcuts.

Shape legend: B batch, C channels, T frames, H height, W width, N = T*H*W (or H*W) positions,
G attention groups (heads x (1 + multi-scale branches)), d head dim. Spatial dims are written
`*S`: (T, H, W) for video models, (H, W) for image models.

Parameter names follow Open-Sora 2.0 / MIT efficientvit (`main`, `op_list`, `conv`, `norm`) so
their checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vidcli.models.dcae.config import DCAEConfig

# ---------------------------------------------------------------------------------------------
# Parameter-free rearrangements of residual autoencoding
# ---------------------------------------------------------------------------------------------


def channels_last(x: Tensor) -> Tensor:
    """A 4-D x in channels-last layout; 5-D x unchanged.

    Image DC-AEs run channels-last: the channel RMSNorm then reduces over contiguous memory
    (a strided reduction over dim 1 cost the 256 px decoder's ResBlocks about 1.7x on CPU) and
    the convolutions keep one layout instead of reordering around every norm. 3-D
    convolutions stay channels-first: PyTorch's CPU conv3d measured over twice slower on
    channels_last_3d input.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def _same_layout(like: Tensor, x: Tensor) -> Tensor:
    """x made contiguous, channels-last when `like` is a channels-last 4-D map."""
    cl = like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last)
    cl = cl and not like.is_contiguous()
    return x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


def space_to_channel(x: Tensor, temporal: bool) -> Tensor:
    """(B, C, *S) -> (B, C*f, *S/2); new channel c*f + dt*4 + dh*2 + dw (f = 8 with T, else 4)."""
    if x.ndim == 4:
        y = rearrange(x, "b c (h i) (w j) -> b (c i j) h w", i=2, j=2)
    elif temporal:
        y = rearrange(x, "b c (t k) (h i) (w j) -> b (c k i j) t h w", k=2, i=2, j=2)
    else:
        y = rearrange(x, "b c t (h i) (w j) -> b (c i j) t h w", i=2, j=2)
    return _same_layout(x, y)


def channel_to_space(x: Tensor, temporal: bool) -> Tensor:
    """Inverse of `space_to_channel`: (B, C*f, *S) -> (B, C, *S*2)."""
    if x.ndim == 4:
        y = rearrange(x, "b (c i j) h w -> b c (h i) (w j)", i=2, j=2)
    elif temporal:
        y = rearrange(x, "b (c k i j) t h w -> b c (t k) (h i) (w j)", k=2, i=2, j=2)
    else:
        y = rearrange(x, "b (c i j) t h w -> b c t (h i) (w j)", i=2, j=2)
    return _same_layout(x, y)


def average_channels(x: Tensor, out_channels: int) -> Tensor:
    """Mean over consecutive groups of channels: (B, C, *S) -> (B, out_channels, *S)."""
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)


def duplicate_channels(x: Tensor, out_channels: int) -> Tensor:
    """Repeat every channel in place (adjacent copies): (B, C, *S) -> (B, out_channels, *S)."""
    return x.repeat_interleave(out_channels // x.shape[1], dim=1)


def _is_channels_last_4d(x: Tensor) -> bool:
    return x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last)


def pooled_space_to_channel(x: Tensor, out_channels: int) -> Tensor:
    """`average_channels(space_to_channel(x), out_channels)` of a channels-last 4-D x, in one pass.

    (B, C, H, W) -> (B, out_channels, H/2, W/2) channels-last, for groups g = 4C / out_channels
    of 1, 2 or 4. Each group holds one input channel's 2 x 2 cell (c*4 + i*2 + j), so the mean
    is a sum of 1, 2 or 4 strided views, scaled by 1/g (a power of two: exact). The generic path
    materialises the 4C-channel map and reduces over a strided dim: about 10x slower at 256 px.
    """
    b, c, h, w = x.shape
    g = 4 * c // out_channels
    v = x.permute(0, 2, 3, 1).unflatten(1, (h // 2, 2)).unflatten(3, (w // 2, 2))  # b h i w j c
    if g >= 2:
        v = (v[:, :, :, :, 0] + v[:, :, :, :, 1]).unsqueeze(4)
    if g == 4:
        v = (v[:, :, 0] + v[:, :, 1]).unsqueeze(2)
    if g > 1:
        v = v.mul_(1.0 / g)
    # (b, h/2, w/2, c, i, j) flattened: channel c*(4/g) + i*(2/g') + j, as space_to_channel orders
    return v.permute(0, 1, 3, 5, 2, 4).reshape(b, h // 2, w // 2, out_channels).permute(0, 3, 1, 2)


def repeated_channel_to_space(x: Tensor, out_channels: int) -> Tensor:
    """`channel_to_space(duplicate_channels(x, 4 * out_channels))` of a channels-last 4-D x.

    (B, C, H, W) -> (B, out_channels, 2H, 2W) channels-last, for repeats r = 4 * out_channels / C
    of 1, 2 or 4: output (c, 2h+i, 2w+j) is input channel (4c + 2i + j) // r, so one expanded
    view and at most two copies replace the repeated map and the shuffle of the generic path.
    """
    b, c, h, w = x.shape
    r = 4 * out_channels // c
    ni, nj = (2 if r <= 2 else 1), (2 if r == 1 else 1)
    v = x.permute(0, 2, 3, 1).reshape(b, h, w, out_channels, ni, nj)
    v = v.permute(0, 1, 4, 2, 5, 3)  # b h ni w nj c
    if ni > 1:
        # Gather the interleaved channels once at input size, so the broadcast copy below
        # reads contiguous channels (r = 1 needs no second copy): one strided gather to the
        # full output cost 1.09 ms, these two 0.59 ms (64 -> 32 channels, 128 -> 256 px, bf16).
        v = v.contiguous()
    v = v.expand(b, h, 2, w, 2, out_channels)  # b h i w j c
    return v.reshape(b, 2 * h, 2 * w, out_channels).permute(0, 3, 1, 2)


def _halves_time(x: Tensor, temporal: bool) -> bool:
    """A temporal stage only rescales T when the clip has more than one frame."""
    return temporal and x.ndim == 5 and x.shape[2] != 1


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


_NORM_BLOCK_BYTES = 1 << 20  # fp32 scratch per row block of the in-place RMSNorm


class RMSNorm(nn.Module):
    """RMS over channels at each position, then a per-channel affine (weight and bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, overwrite: bool = False) -> Tensor:
        """x (B, C, *S) normalised; `overwrite` lets inference reuse x's storage for the result
        (callers pass it for a map nothing else reads, such as a conv's fresh output)."""
        if (
            overwrite
            and x.numel() * 4 > _NORM_BLOCK_BYTES  # smaller maps: one block, per-op cost only
            and _is_channels_last_4d(x)
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            return self._normalize_in_place(x)
        # Statistics and affine run in fp32 (bf16 activations neither overflow nor lose bits)
        # and round once to x's dtype, reducing over dim 1 in x's own layout (no movedim).
        # Channels-last image maps: the mean of squares as a squared 2-norm, one fused read
        # over contiguous channels (F.rms_norm's CPU composite writes x**2 and reads it back).
        # Channels-first video maps: square + mean, vectorised over positions (the norm kernel
        # is ~4x slower on that outer reduction). Without autograd the scale and the affine
        # reuse one fp32 buffer in place.
        xf = x.float()
        shape = (1, -1) + (1,) * (x.ndim - 2)
        if _is_channels_last_4d(x):
            norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True)
            mean_square = norm.square().div_(x.shape[1])
        else:
            mean_square = xf.square().mean(dim=1, keepdim=True)
        inv = mean_square.add_(self.eps).rsqrt_()
        weight, bias = self.weight.float().view(shape), self.bias.float().view(shape)
        if torch.is_grad_enabled():
            return torch.addcmul(bias, xf * inv, weight).to(x.dtype)
        y = xf.mul_(inv) if xf.dtype != x.dtype else xf * inv
        # (in-place methods, not addcmul(out=y): dynamo breaks the graph on a strided out=)
        return y.mul_(weight).add_(bias).to(x.dtype)

    def _normalize_in_place(self, x: Tensor) -> Tensor:
        """The channels-last inference path, written into x's own storage in blocks of rows.

        Same ops per position as `forward`, on the (positions, C) view in ~1 MiB fp32 blocks:
        no full-size fp32 copy and no output map. At 256 px that takes 12 MiB off the peak of
        every 32-channel bf16 ResBlock, and with it the heap growth glibc's allocator returned
        to the OS after each call and page-faulted back in on the next: ~7,000 minor faults per
        bf16 encode or decode (about a sixth of its time), none now. Same speed with the heap kept.
        """
        c = x.shape[1]
        rows = x.permute(0, 2, 3, 1).view(-1, c)  # (positions, C), free on a channels-last map
        weight, bias = self.weight.float(), self.bias.float()
        step = max(1, _NORM_BLOCK_BYTES // (4 * c))
        for i in range(0, rows.shape[0], step):
            block = rows[i : i + step]
            xf = block.float()
            norm = torch.linalg.vector_norm(xf, dim=1, keepdim=True)
            inv = norm.square_().div_(c).add_(self.eps).rsqrt_()
            xf = xf.mul_(inv) if xf.dtype != x.dtype else xf * inv
            block.copy_(xf.mul_(weight).add_(bias))
        return x


def build_norm(kind: str | None, channels: int, dims: int) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "rms":
        return RMSNorm(channels)
    return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)


def build_act(kind: str | None) -> nn.Module | None:
    return {None: None, "silu": nn.SiLU(), "relu": nn.ReLU()}[kind]


class PointwiseConv2d(nn.Conv2d):
    """A 1 x 1 `nn.Conv2d` with faster CPU paths for the channels-last image DC-AE.

    fp32 inference: PyTorch sends single-threaded fp32 1 x 1 convs to its im2col + GEMM
    fallback (`_slow_conv2d_forward`) instead of oneDNN; on channels-last maps that measured
    1.2-4x slower per layer than `torch.mkldnn_convolution` on the same weights from 8 x 8
    positions up (1 thread, issue 24); below that only grouped convs gain. bf16 (ungrouped,
    channels-last): a linear layer on the free (positions, channels) view measured ~20 %
    faster than the conv over the DC-AE's 1 x 1 layers. Other cases take `nn.Conv2d`'s path.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.groups == 1
            and x.dtype == torch.bfloat16
            and x.device.type == "cpu"
            and _is_channels_last_4d(x)
        ):
            y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
            return y.permute(0, 3, 1, 2)
        if (
            not torch.compiler.is_compiling()  # inductor fuses aten.convolution itself
            and x.dtype == self.weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and torch.backends.mkldnn.is_available()
            # below 8 x 8 positions oneDNN's fixed cost per call loses to the fallback
            and (self.groups > 1 or x.shape[-1] * x.shape[-2] >= 64)
        ):
            return torch.mkldnn_convolution(
                x, self.weight, self.bias, (0, 0), (1, 1), (1, 1), self.groups
            )
        return super().forward(x)


class ConvLayer(nn.Module):
    """conv (zero padding k//2 on every side) -> optional norm -> optional activation."""

    def __init__(
        self,
        dims: int,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        stride: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        norm: str | None = None,
        act: str | None = None,
    ):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        if dims == 2 and kernel == 1 and stride == 1:
            conv = PointwiseConv2d
        self.conv = conv(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.norm = build_norm(norm, c_out, dims)
        self.act = build_act(act)

    def forward(self, x: Tensor) -> Tensor:
        if self.norm is None and type(self.act) in _ONEDNN_ACT and _fuses_activation(x, self.conv):
            return conv_act_onednn(x, self.conv, self.act)
        x = self.conv(x)
        if isinstance(self.norm, RMSNorm):
            x = self.norm(x, overwrite=True)  # the conv's output: nothing else reads it
        elif self.norm is not None:
            x = self.norm(x)
        return x if self.act is None else self.act(x)


# oneDNN's names for the activations it applies to a conv's fp32 accumulator (post-ops)
_ONEDNN_ACT = {nn.SiLU: "swish", nn.ReLU: "relu"}


def _fuses_activation(x: Tensor, conv: nn.Module) -> bool:
    """Whether `conv_act_onednn` takes this conv: bf16 inference on a channels-last CPU map.

    bf16 elementwise kernels are slow on CPUs without AMX (a bf16 SiLU over a 256 px,
    32-channel map: 0.64 ms, the fp32 one 0.42 ms), while oneDNN applies the activation to the
    fp32 accumulator as a post-op at almost no cost. fp32 keeps PyTorch's path (no gain there);
    so do autograd, autocast and tracing (inductor fuses the same post-ops itself).
    """
    return (
        x.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and _is_channels_last_4d(x)
        # below 32 x 32 positions the fused primitive's fixed cost per call ate its gain in
        # the whole model (64 px input: 1-2 % slower than the two-step path)
        and x.shape[-1] * x.shape[-2] >= 1024
        and isinstance(conv, nn.Conv2d)
        and conv.padding_mode == "zeros"
        and (conv.groups == 1 or not isinstance(conv, PointwiseConv2d))
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and torch.backends.mkldnn.is_available()
    )


def conv_act_onednn(x: Tensor, conv: nn.Conv2d, act: nn.Module) -> Tensor:
    """`act(conv(x))` for bf16 channels-last x in one oneDNN primitive (channels-last out).

    The activation acts on the fp32 accumulator before the single bf16 rounding, so the result
    is at least as close to the fp32 math as the two-step path. Measured per layer (1 thread,
    bf16, quarter-width sana DC-AE shapes): 3 x 3 conv + SiLU 2.96 -> 2.65 ms at 32 channels
    x 256 x 256, 2.46 -> 2.38 ms at 128 x 64 x 64; 1 x 1 expansion + SiLU 0.89 -> 0.76 ms at
    128 -> 1024 channels x 32 x 32. A 1 x 1 conv runs as a linear layer on the positions-major
    view, as `PointwiseConv2d` does.
    """
    attr = _ONEDNN_ACT[type(act)]
    if isinstance(conv, PointwiseConv2d):
        y = torch.ops.mkldnn._linear_pointwise(
            x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias, attr, [], ""
        )
        return y.permute(0, 3, 1, 2)
    return torch.ops.mkldnn._convolution_pointwise(
        x,
        conv.weight,
        conv.bias,
        conv.padding,
        conv.stride,
        conv.dilation,
        conv.groups,
        attr,
        [],
        "",
    )


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


class ResBlockMain(nn.Module):
    """conv3 (bias) -> act -> conv3 (no bias) -> norm; the identity shortcut lives in `Residual`."""

    def __init__(self, dims: int, channels: int, norm: str, act: str):
        super().__init__()
        self.conv1 = ConvLayer(dims, channels, channels, act=act)
        self.conv2 = ConvLayer(dims, channels, channels, bias=False, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class LiteMLA(nn.Module):
    """ReLU linear attention over all positions of a sample, with multi-scale q/k/v aggregation.

    The 3C qkv channels are head-interleaved: head h owns channels [3dh, 3dh+3d) ordered q | k | v;
    every aggregation branch adds `heads` more pseudo-heads.
    """

    eps = 1e-15

    def __init__(self, dims: int, channels: int, head_dim: int, scales: tuple[int, ...], norm: str):
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        heads = channels // head_dim
        self.head_dim = head_dim
        self.qkv = ConvLayer(dims, channels, 3 * channels, kernel=1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                conv(
                    3 * channels, 3 * channels, k, padding=k // 2, groups=3 * channels, bias=False
                ),
                (nn.Conv3d if dims == 3 else PointwiseConv2d)(
                    3 * channels, 3 * channels, 1, groups=3 * heads, bias=False
                ),
            )
            for k in scales
        )
        self.proj = ConvLayer(
            dims, channels * (1 + len(scales)), channels, kernel=1, bias=False, norm=norm
        )

    def attend(self, qkv: Tensor) -> Tensor:
        """(B, G*3d, *S) -> (B, G*d, *S): out_n = sum_m v_m (k_m . q_n) / sum_m (k_m . q_n).

        A channels-last map (the image DC-AE) is read as positions-major (B, G, N, 3d), a free
        view, and its output comes back channels-last, so `proj` and its norm see no layout
        flip; channels-first maps (video) use the channels-major (B, G, 3d, N) view.
        """
        b, c, *spatial = qkv.shape
        d = self.head_dim
        # The matmuls sum over every position: fp32 keeps long clips from losing precision.
        # ("cpu" for meta tensors too: the memory plan runs this on `meta`, which has no autocast.)
        with torch.autocast("cuda" if qkv.is_cuda else "cpu", enabled=False):
            if not _is_channels_last_4d(qkv):
                t = qkv.float().flatten(2).unflatten(1, (-1, 3 * d))  # (B, G, 3d, N)
                q, k, v = F.relu(t[:, :, :d]), F.relu(t[:, :, d : 2 * d]), t[:, :, 2 * d :]
                v = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones yields the denominator
                out = (v @ k.transpose(-1, -2)) @ q  # (B, G, d+1, N)
                out = out[:, :, :d] / (out[:, :, d:] + self.eps)
                return out.flatten(1, 2).unflatten(2, spatial)
            t = qkv.float().movedim(1, -1).reshape(b, -1, c // (3 * d), 3, d)  # (B, N, G, 3, d)
            if qkv.dtype != torch.float32 and not torch.is_grad_enabled():
                t[:, :, :, :2].relu_()  # q and k in one pass over the fp32 copy this owns
                q, k, v = t.transpose(1, 2).unbind(3)  # (B, G, N, d) each
            else:
                q, k, v = t.transpose(1, 2).unbind(3)
                q, k = F.relu(q), F.relu(k)
            # numerator and denominator as two products: a padded ones-column here would be a
            # strided (N, d+1) map to slice and divide, the slowest step of this layout; the
            # denominator as a vecdot, not a (N, d) @ (d, 1) matmul (bf16 attention at
            # 128 channels x 32 x 32, both changes: 0.71 -> 0.61 ms)
            num = q @ (k.transpose(-1, -2) @ v)  # (B, G, N, d)
            den = torch.linalg.vecdot(q, k.sum(dim=2, keepdim=True)).unsqueeze(-1)  # (B, G, N, 1)
            out = num.div_(den.add_(self.eps))
        return out.transpose(1, 2).reshape(b, *spatial, -1).movedim(-1, 1)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x)
        branches = [qkv] + [agg(qkv) for agg in self.aggreg]
        out = self.attend(torch.cat(branches, dim=1)).to(x.dtype)
        return self.proj(out)


class GLUMBConv(nn.Module):
    """Pointwise expand x8 -> depthwise 3 conv -> value * act(gate) -> pointwise C -> norm."""

    def __init__(self, dims: int, channels: int, norm: str, act: str, expand: int = 4):
        super().__init__()
        mid = channels * expand
        self.inverted_conv = ConvLayer(dims, channels, 2 * mid, kernel=1, act=act)
        self.depth_conv = ConvLayer(dims, 2 * mid, 2 * mid, groups=2 * mid)
        self.point_conv = ConvLayer(dims, mid, channels, kernel=1, bias=False, norm=norm)
        self.glu_act = build_act(act)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.depth_conv(self.inverted_conv(x)).chunk(2, dim=1)
        return self.point_conv(value * self.glu_act(gate))


class Residual(nn.Module):
    """`main(x) + shortcut(x)`; the shortcut is the identity or a parameter-free rearrangement."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.main(x)
        short = x if self.shortcut is None else self.shortcut(x)
        # Without autograd the sum can reuse main's buffer (one full-size allocation less per
        # block); with autograd it must not, as main's last op may have saved its output.
        return out.add_(short) if not torch.is_grad_enabled() else out + short


class EViTBlock(nn.Module):
    """EfficientViT block: x + attention(x), then x + GLUMBConv(x)."""

    def __init__(
        self, dims: int, channels: int, head_dim: int, scales: tuple[int, ...], norm: str, act: str
    ):
        super().__init__()
        self.context_module = Residual(LiteMLA(dims, channels, head_dim, scales, norm), None)
        self.local_module = Residual(GLUMBConv(dims, channels, norm, act), None)

    def forward(self, x: Tensor) -> Tensor:
        return self.local_module(self.context_module(x))


class ConvPixelUnshuffle(nn.Module):
    """Conv to C_out/4, then space-to-channel: a down block's main path without striding."""

    def __init__(self, dims: int, c_in: int, c_out: int):
        super().__init__()
        self.conv = ConvLayer(dims, c_in, c_out // 4)

    def forward(self, x: Tensor) -> Tensor:
        return space_to_channel(self.conv(x), temporal=False)


def build_down_main(dims: int, c_in: int, c_out: int, kind: str, temporal: bool) -> nn.Module:
    """Main path of a down block: strided conv (T too when `temporal`), or conv + unshuffle."""
    if kind == "pixel_unshuffle":
        return ConvPixelUnshuffle(dims, c_in, c_out)
    stride = (2 if temporal else 1, 2, 2) if dims == 3 else 2
    return ConvLayer(dims, c_in, c_out, stride=stride)


class UpMain(nn.Module):
    """Main path of an up block: nearest x2 then conv, or conv to C_out*4 then channel-to-space."""

    def __init__(self, dims: int, c_in: int, c_out: int, kind: str, temporal: bool):
        super().__init__()
        self.temporal = temporal
        self.interpolate = kind == "interpolate"
        self.conv = ConvLayer(dims, c_in, c_out if self.interpolate else 4 * c_out)
        self._taps: Tensor | None = None
        self._taps_key: tuple | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.interpolate:
            return channel_to_space(self.conv(x), temporal=False)
        weight = self.conv.conv.weight
        upsampled_bytes = x.numel() * 4 * x.element_size()
        derived_bytes = weight.numel() * 16 // 9 * 4 * 2  # fp32 4x4 taps, two stacks alive
        cpu_inference = (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.shape[-1] * x.shape[-2] >= 64
        )
        if x.ndim == 4 and (cpu_inference or upsampled_bytes >= derived_bytes):
            return upsample_conv(x, weight, self.conv.conv.bias, taps=self.cached_taps(x.dtype))
        # Video (3-D) up blocks keep the plain path (the memory plan measures video decode
        # peaks as linear in the tile volume), and so do low-resolution wide 2-D ones where
        # the derived weights would outweigh the upsampled map they avoid. CPU inference keeps
        # the taps (eager cache; frozen constants when compiled), and there from 8 x 8 inputs
        # up the transposed conv is never slower (256 -> 128 channels at 16 x 16: 0.76 ms
        # against 1.28 ms, bf16, 1 thread); below, oneDNN's fixed cost per transposed conv
        # loses (256 channels at 2 x 2: 0.62 ms against 0.39 ms).
        scale = (2 if _halves_time(x, self.temporal) else 1, 2, 2) if x.ndim == 5 else (2, 2)
        return self.conv(F.interpolate(x, scale_factor=scale, mode="nearest"))

    def cached_taps(self, dtype: torch.dtype) -> Tensor | None:
        """`upsample_taps` of the conv weight in `dtype`, kept between inference calls.

        Deriving them cost 0.1-0.6 ms per call at 256 px (quarter-width sana decoder, bf16,
        1 thread), up to half of the transposed conv itself. The cache is keyed on the weight's
        storage, version counter (bumped by optimiser steps and in-place loads), device and
        dtypes, and holds 16/9 of the conv weight for the module's life (dc-ae-f32c32: 32M
        values over its up blocks, a fifth of its decoder), so only CPU weights keep one (GPU
        memory plans count weights); autograd, tracing and inference-mode weights (no version
        counter) derive anew.
        """
        weight = self.conv.conv.weight
        if (
            torch.is_grad_enabled()
            or torch.compiler.is_compiling()
            or weight.is_inference()
            or weight.device.type != "cpu"
        ):
            return None
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, dtype)
        if self._taps_key != key:
            self._taps, self._taps_key = upsample_taps(weight).to(dtype), key
        return self._taps


def upsample_taps(weight: Tensor) -> Tensor:
    """The fp32 (C_in, C_out, 4, 4) transposed-conv weight standing for a 3 x 3 conv weight.

    Along each axis, output 2i of `conv3x3(nearest_upsample_x2(x))` sees the input taps
    (i-1, i, i) and output 2i+1 the taps (i, i, i+1): a stride-2 transposed conv with the 4 taps
    [w2, w1+w2, w0+w1, w0] produces exactly those sums. The tap sums are fp32 elementwise adds
    (no GEMM), so they round the same wherever the weights sit.
    """
    w = weight.float().transpose(0, 1)  # (C_in, C_out, 3, 3): the transposed conv's layout
    for axis in (2, 3):
        w0, w1, w2 = w.unbind(axis)
        w = torch.stack((w2, w1 + w2, w0 + w1, w0), dim=axis)
    return w


def upsample_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, taps: Tensor | None = None
) -> Tensor:
    """`conv3x3(nearest_upsample_x2(x), padding 1)` of a 4-D x without the upsampled map.

    One stride-2 transposed conv with `upsample_taps(weight)` (or `taps`, already in x's dtype)
    on the low-resolution input: 2 x 2 instead of 3 x 3 multiply-adds per output (4/9), and
    the upsampled map is never materialised.
    """
    w = upsample_taps(weight).to(x.dtype) if taps is None else taps
    return F.conv_transpose2d(x, w, bias, stride=2, padding=1)


class DownShortcut(nn.Module):
    """Space-to-channel, then average consecutive channel groups down to C_out."""

    def __init__(self, c_out: int, temporal: bool):
        super().__init__()
        self.c_out, self.temporal = c_out, temporal

    def forward(self, x: Tensor) -> Tensor:
        if _is_channels_last_4d(x) and 4 * x.shape[1] in (
            self.c_out,
            2 * self.c_out,
            4 * self.c_out,
        ):
            return pooled_space_to_channel(x, self.c_out)
        return average_channels(space_to_channel(x, _halves_time(x, self.temporal)), self.c_out)


class UpShortcut(nn.Module):
    """Duplicate channels to C_out*f, then channel-to-space."""

    def __init__(self, c_out: int, temporal: bool):
        super().__init__()
        self.c_out, self.temporal = c_out, temporal

    def forward(self, x: Tensor) -> Tensor:
        if _is_channels_last_4d(x) and 4 * self.c_out in (
            x.shape[1],
            2 * x.shape[1],
            4 * x.shape[1],
        ):
            return repeated_channel_to_space(x, self.c_out)
        temporal = _halves_time(x, self.temporal)
        return channel_to_space(
            duplicate_channels(x, self.c_out * (8 if temporal else 4)), temporal
        )


class ChannelAverage(nn.Module):
    def __init__(self, c_out: int):
        super().__init__()
        self.c_out = c_out

    def forward(self, x: Tensor) -> Tensor:
        return average_channels(x, self.c_out)


class ChannelDuplicate(nn.Module):
    def __init__(self, c_out: int):
        super().__init__()
        self.c_out = c_out

    def forward(self, x: Tensor) -> Tensor:
        return duplicate_channels(x, self.c_out)


class OpSequence(nn.Module):
    """Modules applied in order, kept under `op_list` (the reference checkpoints' key)."""

    def __init__(self, ops: list[nn.Module]):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        for op in self.op_list:
            x = op(x)
        return x


def build_block(
    cfg: DCAEConfig, kind: str, channels: int, scales: tuple[int, ...], norm: str, act: str
) -> nn.Module:
    dims = 3 if cfg.is_video else 2
    if kind == "ResBlock":
        return Residual(ResBlockMain(dims, channels, norm, act), None)
    return EViTBlock(dims, channels, cfg.attention_head_dim, scales, norm, act)
