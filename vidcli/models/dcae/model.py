"""DC-AE: deep-compression autoencoders with residual autoencoding, 2-D (image) and 3-D (video).

Shape legend: B batch, C channels, T frames, H height, W width, N = T*H*W (or H*W) positions,
G attention groups (heads x (1 + multi-scale branches)), d head dim. Spatial dims are written
`*S`: (T, H, W) for video models, (H, W) for image models.

Parameter names follow Open-Sora 2.0 / MIT efficientvit (`stages.S.op_list.J.main...`) so their
checkpoints load unchanged; diffusers' names are mapped in `convert.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidcli.errors import ShapeError
from vidcli.models.dcae.config import DCAEConfig, TilingConfig
from vidcli.models.dcae.tiling import tiled_decode, tiled_encode

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


def _halves_time(x: Tensor, temporal: bool) -> bool:
    """A temporal stage only rescales T when the clip has more than one frame."""
    return temporal and x.ndim == 5 and x.shape[2] != 1


# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMS over channels at each position, then a per-channel affine (weight and bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        # Channels moved last: on a channels-last map (how the DC-AE runs) that is a free view and
        # F.rms_norm reduces over contiguous memory. The statistics in fp32 keep bf16 activations
        # from overflowing / losing bits; the affine runs in x's dtype as one fused pass.
        y = F.rms_norm(x.movedim(1, -1).float(), (x.shape[1],), eps=self.eps).to(x.dtype)
        return torch.addcmul(self.bias, y, self.weight).movedim(-1, 1)


def build_norm(kind: str | None, channels: int, dims: int) -> nn.Module | None:
    if kind is None:
        return None
    if kind == "rms":
        return RMSNorm(channels)
    return (nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d)(channels)


def build_act(kind: str | None) -> nn.Module | None:
    return {None: None, "silu": nn.SiLU(), "relu": nn.ReLU()}[kind]


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
        self.conv = conv(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias)
        self.norm = build_norm(norm, c_out, dims)
        self.act = build_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x if self.act is None else self.act(x)


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
                conv(3 * channels, 3 * channels, 1, groups=3 * heads, bias=False),
            )
            for k in scales
        )
        self.proj = ConvLayer(
            dims, channels * (1 + len(scales)), channels, kernel=1, bias=False, norm=norm
        )

    def attend(self, qkv: Tensor) -> Tensor:
        """(B, G*3d, *S) -> (B, G*d, *S): out_n = sum_m v_m (k_m . q_n) / sum_m (k_m . q_n)."""
        spatial = qkv.shape[2:]
        d = self.head_dim
        # The two matmuls sum over every position: fp32 keeps long clips from losing precision.
        # ("cpu" for meta tensors too: the memory plan runs this on `meta`, which has no autocast.)
        with torch.autocast("cuda" if qkv.is_cuda else "cpu", enabled=False):
            qkv = qkv.float().flatten(2).unflatten(1, (-1, 3 * d))  # (B, G, 3d, N)
            q, k, v = F.relu(qkv[:, :, :d]), F.relu(qkv[:, :, d : 2 * d]), qkv[:, :, 2 * d :]
            v = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones yields the denominator
            out = (v @ k.transpose(-1, -2)) @ q  # (B, G, d+1, N)
            out = out[:, :, :d] / (out[:, :, d:] + self.eps)
        return out.flatten(1, 2).unflatten(2, spatial)

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

    def forward(self, x: Tensor) -> Tensor:
        if not self.interpolate:
            return channel_to_space(self.conv(x), temporal=False)
        weight = self.conv.conv.weight
        upsampled_bytes = x.numel() * 4 * x.element_size()
        derived_bytes = weight.numel() * 16 // 9 * 4 * 2  # fp32 4x4 taps, two stacks alive
        if x.ndim == 4 and upsampled_bytes >= derived_bytes:
            return upsample_conv(x, weight, self.conv.conv.bias)
        # Video (3-D) up blocks and low-resolution wide ones keep the plain path: there the
        # transposed conv's derived weights would outweigh the upsampled map they avoid (and
        # the memory plan measures video decode peaks as linear in the tile volume).
        scale = (2 if _halves_time(x, self.temporal) else 1, 2, 2) if x.ndim == 5 else (2, 2)
        return self.conv(F.interpolate(x, scale_factor=scale, mode="nearest"))


def upsample_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`conv3x3(nearest_upsample_x2(x), padding 1)` of a 4-D x without the upsampled map.

    Along each axis, output 2i sees the input taps (i-1, i, i) and output 2i+1 the taps
    (i, i, i+1): a stride-2 transposed conv with the 4 taps [w2, w1+w2, w0+w1, w0] produces
    exactly those sums. So one transposed conv on the low-resolution input does 2x2 instead of
    3x3 multiply-adds per output (4/9) and never materialises the upsampled map. The tap sums
    are fp32 elementwise adds (no GEMM), so they round the same wherever the weights sit.
    """
    w = weight.float().transpose(0, 1)  # (C_in, C_out, 3, 3): the transposed conv's layout
    for axis in (2, 3):
        w0, w1, w2 = w.unbind(axis)
        w = torch.stack((w2, w1 + w2, w0 + w1, w0), dim=axis)
    return F.conv_transpose2d(x, w.to(x.dtype), bias, stride=2, padding=1)


class DownShortcut(nn.Module):
    """Space-to-channel, then average consecutive channel groups down to C_out."""

    def __init__(self, c_out: int, temporal: bool):
        super().__init__()
        self.c_out, self.temporal = c_out, temporal

    def forward(self, x: Tensor) -> Tensor:
        return average_channels(space_to_channel(x, _halves_time(x, self.temporal)), self.c_out)


class UpShortcut(nn.Module):
    """Duplicate channels to C_out*f, then channel-to-space."""

    def __init__(self, c_out: int, temporal: bool):
        super().__init__()
        self.c_out, self.temporal = c_out, temporal

    def forward(self, x: Tensor) -> Tensor:
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


# ---------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """(B, C_in, *S) -> raw latent (B, latent, *S / compression)."""

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        dims = 3 if cfg.is_video else 2
        widths, depths, tflags = cfg.encoder_widths, cfg.encoder_depths, cfg.temporal_downsample
        if depths[0] > 0:
            self.project_in = ConvLayer(dims, cfg.in_channels, widths[0])
        else:  # depth-0 stem: a down block without shortcut straight to stage 1's width
            self.project_in = build_down_main(
                dims, cfg.in_channels, widths[1], cfg.downsample, tflags[0]
            )
        self.stages = nn.ModuleList()
        for s, depth in enumerate(depths):
            ops = [
                build_block(
                    cfg,
                    cfg.encoder_block_types[s],
                    widths[s],
                    cfg.encoder_qkv_scales[s],
                    cfg.encoder_norm,
                    cfg.encoder_act,
                )
                for _ in range(depth)
            ]
            if s < len(depths) - 1 and depth > 0:
                main = build_down_main(dims, widths[s], widths[s + 1], cfg.downsample, tflags[s])
                short = DownShortcut(widths[s + 1], tflags[s]) if cfg.downsample_shortcut else None
                ops.append(Residual(main, short))
            self.stages.append(OpSequence(ops))
        out_conv = OpSequence([ConvLayer(dims, widths[-1], cfg.latent_channels)])
        short = ChannelAverage(cfg.latent_channels) if cfg.encoder_out_shortcut else None
        self.project_out = Residual(out_conv, short)
        self.gradient_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        x = self.project_in(channels_last(x))
        for stage in self.stages:
            for op in stage.op_list:
                x = _run(op, x, self.gradient_checkpointing)
        return self.project_out(x).contiguous()


class Decoder(nn.Module):
    """Raw latent (B, latent, *S) -> (B, C_in, *S * compression)."""

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        dims = 3 if cfg.is_video else 2
        widths, depths, tflags = cfg.decoder_widths, cfg.decoder_depths, cfg.temporal_upsample
        short = ChannelDuplicate(widths[-1]) if cfg.decoder_in_shortcut else None
        self.project_in = Residual(ConvLayer(dims, cfg.latent_channels, widths[-1]), short)
        self.stages = nn.ModuleList()
        for s, depth in enumerate(depths):
            ops: list[nn.Module] = []
            if s < len(depths) - 1 and depth > 0:
                main = UpMain(dims, widths[s + 1], widths[s], cfg.upsample, tflags[s])
                short = UpShortcut(widths[s], tflags[s]) if cfg.upsample_shortcut else None
                ops.append(Residual(main, short))
            ops += [
                build_block(
                    cfg,
                    cfg.decoder_block_types[s],
                    widths[s],
                    cfg.decoder_qkv_scales[s],
                    cfg.decoder_norms[s],
                    cfg.decoder_acts[s],
                )
                for _ in range(depth)
            ]
            self.stages.append(OpSequence(ops))
        if depths[0] > 0:
            last, out = widths[0], ConvLayer(dims, widths[0], cfg.in_channels)
        else:  # depth-0 tail: an up block without shortcut from stage 1's width
            last, out = widths[1], UpMain(dims, widths[1], cfg.in_channels, cfg.upsample, tflags[0])
        self.project_out = OpSequence([RMSNorm(last), build_act(cfg.decoder_out_act), out])
        self.gradient_checkpointing = False

    def forward(self, z: Tensor) -> Tensor:
        x = self.project_in(channels_last(z))
        for stage in reversed(self.stages):
            for op in stage.op_list:
                x = _run(op, x, self.gradient_checkpointing)
        return self.project_out(x).contiguous()


def _run(op: nn.Module, x: Tensor, grad_ckpt: bool) -> Tensor:
    if grad_ckpt and torch.is_grad_enabled():
        return checkpoint(op, x, use_reentrant=False)
    return op(x)


# ---------------------------------------------------------------------------------------------
# Top-level autoencoder
# ---------------------------------------------------------------------------------------------


class DCAE(nn.Module):
    """A DC-AE: `encode` pixels in [-1, 1] to scaled latents, `decode` them back.

    Video models take (B, C, T, H, W); image models take (B, C, H, W) or (B, C, 1, H, W) and
    return the same rank. See the package docstring for valid shapes and the scaling convention.
    """

    def __init__(self, config: DCAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.tiling: TilingConfig | None = None

    latent_channels = property(lambda self: self.config.latent_channels)
    time_compression = property(lambda self: self.config.time_compression)
    spatial_compression = property(lambda self: self.config.spatial_compression)
    scaling_factor = property(lambda self: self.config.scaling_factor)
    is_video = property(lambda self: self.config.is_video)
    _compression = property(lambda self: (self.time_compression, self.spatial_compression))

    # ---- shapes -------------------------------------------------------------------------------

    def _latent_frames(self, frames: int) -> int | None:
        """Latent frames for `frames` input frames, None when a temporal stage gets an odd T > 1."""
        for temporal in self.config.temporal_downsample:
            if temporal and frames != 1:
                if frames % 2:
                    return None
                frames //= 2
        return frames

    def _valid_frames_text(self) -> str:
        tc = self.time_compression
        small = [str(2**i) for i in range(tc.bit_length() - 1)]
        return f"{', '.join(small)} or a multiple of {tc}" if small else "any"

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        """Raise ShapeError (one line listing the valid values) for a size the model cannot take."""
        sc = self.spatial_compression
        if frames < 1 or (not self.is_video and frames != 1):
            valid = self._valid_frames_text() if self.is_video else "1 (image model)"
            raise ShapeError(f"{frames} frames: this DC-AE takes T = {valid}")
        if self._latent_frames(frames) is None:
            raise ShapeError(f"{frames} frames: this DC-AE takes T = {self._valid_frames_text()}")
        for name, v in (("height", height), ("width", width)):
            if v < sc or v % sc:
                raise ShapeError(
                    f"{name} {v}: this DC-AE takes multiples of {sc} "
                    f"(e.g. {sc * max(1, round(v / sc))})"
                )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latent of a (frames, height, width) input; ShapeError if bad."""
        self.check_input_shape(frames, height, width)
        sc = self.spatial_compression
        return (self.latent_channels, self._latent_frames(frames), height // sc, width // sc)

    def decoded_frames(self, latent_frames: int) -> int:
        """Frames the decoder returns for `latent_frames` (one latent frame gives one frame)."""
        if latent_frames < 1:
            raise ShapeError(f"{latent_frames} latent frames: need at least 1")
        frames = latent_frames
        for temporal in self.config.temporal_upsample:
            if temporal and frames != 1:
                frames *= 2
        return frames

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute each block's activations in backward instead of storing them."""
        self.encoder.gradient_checkpointing = enabled
        self.decoder.gradient_checkpointing = enabled

    # ---- encode / decode ----------------------------------------------------------------------

    def _as_5d(self, x: Tensor, what: str) -> tuple[Tensor, bool]:
        """Video rank for shape checks; image models also take 4-D tensors."""
        if x.ndim == 5:
            return x, False
        if x.ndim == 4 and not self.is_video:
            return x.unsqueeze(2), True
        want = "(B, C, T, H, W)" if self.is_video else "(B, C, H, W) or (B, C, 1, H, W)"
        raise ShapeError(f"{what} of shape {tuple(x.shape)}: expected {want}")

    def encode(self, x: Tensor, tiling: TilingConfig | None = None) -> Tensor:
        """Pixels (B, C_in, T, H, W) in [-1, 1] -> scaled latent (B, latent, T', H', W').

        Returns `encoder(x) / scaling_factor` (Open-Sora's convention; no scaling when None).
        `tiling` (else `self.tiling`) runs the encoder on overlapping tiles.
        """
        x5, squeezed = self._as_5d(x, "encode input")
        if x5.shape[1] != self.config.in_channels:
            raise ShapeError(
                f"encode input has {x5.shape[1]} channels, expected {self.config.in_channels}"
            )
        self.check_input_shape(*x5.shape[2:])
        tiling = tiling or self.tiling
        run = self._encode_raw
        if tiling is None:
            z = run(x5)
        else:
            z = tiled_encode(run, x5, self._compression, self.latent_shape, tiling)
        if self.scaling_factor is not None:
            z = z / self.scaling_factor
        return z.squeeze(2) if squeezed else z

    def decode(self, z: Tensor, tiling: TilingConfig | None = None) -> Tensor:
        """Scaled latent (B, latent, T', H', W') -> pixels (B, C_in, T, H, W).

        Multiplies by `scaling_factor` before the decoder (inverse of `encode`).
        """
        z5, squeezed = self._as_5d(z, "decode input")
        if z5.shape[1] != self.latent_channels:
            raise ShapeError(
                f"decode input has {z5.shape[1]} channels, expected {self.latent_channels}"
            )
        if not self.is_video and z5.shape[2] != 1:
            raise ShapeError(f"decode input has {z5.shape[2]} frames: image models take 1")
        if self.scaling_factor is not None:
            z5 = z5 * self.scaling_factor
        tiling = tiling or self.tiling
        run = self._decode_raw
        if tiling is None:
            x = run(z5)
        else:
            x = tiled_decode(run, z5, self._compression, self.decoded_frames, tiling)
        return x.squeeze(2) if squeezed else x

    def _encode_raw(self, x: Tensor) -> Tensor:
        """Encoder on a 5-D tensor, unscaled."""
        if self.is_video:
            return self.encoder(x)
        return self.encoder(x.squeeze(2)).unsqueeze(2)

    def _decode_raw(self, z: Tensor) -> Tensor:
        """Decoder on a 5-D tensor, unscaled."""
        if self.is_video:
            return self.decoder(z)
        return self.decoder(z.squeeze(2)).unsqueeze(2)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction decode(encode(x)), same shape as x for round-tripping sizes."""
        return self.decode(self.encode(x))
