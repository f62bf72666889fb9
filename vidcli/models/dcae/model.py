"""DC-AE: deep-compression autoencoders with residual autoencoding, 2-D (image) and 3-D (video).

The encoder, decoder and the autoencoder with its latent scaling and tiling; the blocks they
stack are in `blocks.py`. Shape legend as there: B batch, C channels, T frames, H height,
W width; spatial dims are written `*S`: (T, H, W) for video models, (H, W) for image models.

Parameter names follow Open-Sora 2.0 / MIT efficientvit (`stages.S.op_list.J.main...`) so their
checkpoints load unchanged; diffusers' names are mapped in `convert.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidcli.errors import ShapeError
from vidcli.models.dcae.blocks import (
    ChannelAverage,
    ChannelDuplicate,
    ConvLayer,
    DownShortcut,
    OpSequence,
    Residual,
    RMSNorm,
    UpMain,
    UpShortcut,
    build_act,
    build_block,
    build_down_main,
    channels_last,
)
from vidcli.models.dcae.config import DCAEConfig, TilingConfig
from vidcli.models.dcae.tiling import tiled_decode, tiled_encode

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
        self.project_out = (
            Residual(out_conv, ChannelAverage(cfg.latent_channels))
            if cfg.encoder_out_shortcut
            else MainOnly(out_conv)
        )
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
        in_conv = ConvLayer(dims, cfg.latent_channels, widths[-1])
        self.project_in = (
            Residual(in_conv, ChannelDuplicate(widths[-1]))
            if cfg.decoder_in_shortcut
            else MainOnly(in_conv)
        )
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
        norm, act, out = self.project_out.op_list
        # x is the last block's own sum, read by nothing else: inference may normalise in place
        return out(act(norm(x, overwrite=True))).contiguous()


class MainOnly(nn.Module):
    """`main(x)` alone: a latent projection with its shortcut off (the plain conv, as in MIT's
    and diffusers' DC-AE), under `Residual`'s parameter names so checkpoints load either way."""

    def __init__(self, main: nn.Module):
        super().__init__()
        self.main = main

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


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
