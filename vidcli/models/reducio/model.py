"""The Reducio-VAE: a 3-D motion encoder, a 2-D content encoder and a fusion decoder.

Shapes (ft4 released): video (B, 3, 16, H, W) in [-1, 1] -> posterior (B, 16, 4, H/32, W/32);
content frame (B, 3, H, W) = the clip's frame (T − 1)//2 -> feature pyramid; the decoder renders
(B, 3, 16, H, W) from a latent and the pyramid. H, W: multiples of 32 (2^(len(ch_mult) − 1)).

Latent convention (the reference's, shared/reference/reducio.md §3.5): the latent a DiT trains
on is `layer_norm(sample)` of a posterior *sample*, per sample over (C, T, H, W), no affine, eps
1e-5, and no scaling factor — `encode(x, sample=True)`. `encode(x)` is the deterministic variant:
the layer-normed posterior mean (for tests and previews). `decode(z, content=frame)` takes z as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidcli.errors import ShapeError, UsageError
from vidcli.models.dcae.config import TilingConfig
from vidcli.models.reducio.config import ReducioConfig
from vidcli.models.reducio.layers import (
    Downsample,
    FusionBlock,
    ResBlock,
    SelfAttention,
    Upsample,
    conv,
    group_norm,
)
from vidcli.models.reducio.tiling import tiled_decode, tiled_moments, tiled_pyramid

LOGVAR_RANGE = (-30.0, 20.0)
"""Posterior log-variance clamp."""
LATENT_NORM_EPS = 1e-5
"""eps of the per-sample layer norm that turns a posterior sample into the latent."""


def sample_posterior(mean: Tensor, logvar: Tensor, noise: Tensor) -> Tensor:
    """mean + exp(logvar / 2) · noise, all (B, E, T', H', W')."""
    return mean + torch.exp(0.5 * logvar) * noise


def normalize_latent(sample: Tensor) -> Tensor:
    """Per-sample layer norm over (C, T, H, W), no affine: the latent the decoder expects."""
    return F.layer_norm(sample, sample.shape[1:], eps=LATENT_NORM_EPS)


def _maybe_checkpoint(enabled: bool, fn: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """fn(*args), recomputed in backward (not stored) when enabled and autograd is on."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


@dataclass
class ContentPyramid:
    """Content-frame features the decoder reads: one feature list per spatial tile.

    `grid[row][col]` is [level 0 skip, ..., last level skip, mid-after-attention] of one tile;
    untiled, the grid is 1×1. `tile` is the tile stride in pixels (None: untiled).
    """

    grid: list[list[list[Tensor]]]
    tile: int | None
    height: int
    width: int

    @property
    def features(self) -> list[Tensor]:
        """The feature list of an untiled pyramid: (B, C_i, H/2^i, W/2^i) per level, then mid."""
        if self.tile is not None:
            raise UsageError("a tiled content pyramid has one feature list per tile (see grid)")
        return self.grid[0][0]


class Encoder(nn.Module):
    """Levels of residual blocks (+ downsample), then mid Res → self-attention → Res.

    3-D motion encoder: `forward` adds GN → SiLU → conv_out (2·z_channels moments).
    2-D content encoder: `pyramid` returns each level's output and the mid attention's output;
    its `mid.block_2` and `norm_out` exist in the checkpoints but the reference discards them.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        ch: int,
        ch_mult: tuple[int, ...],
        num_res_blocks: int,
        dropout: float,
        downsample: list[str | None],
        out_channels: int | None,
        attention_window: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = conv(dims, in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        c = ch
        for mult, kind in zip(ch_mult, downsample, strict=True):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResBlock(dims, c, ch * mult, dropout))
                c = ch * mult
            level.downsample = Downsample(c, kind) if kind else None
            self.down.append(level)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(dims, c, c, dropout)
        self.mid.attn_1 = SelfAttention(dims, c, attention_window)
        self.mid.block_2 = ResBlock(dims, c, c, dropout)
        self.norm_out = group_norm(c)
        self.conv_out = conv(dims, c, out_channels, 3, padding=1) if out_channels else None

    def _trunk(self, x: Tensor, skips: list[Tensor] | None) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = _maybe_checkpoint(self.gradient_checkpointing, block, h)
            if skips is not None:
                skips.append(h)
            if level.downsample is not None:
                h = level.downsample(h)
        h = _maybe_checkpoint(self.gradient_checkpointing, self.mid.block_1, h)
        return self.mid.attn_1(h)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) -> (B, 2·z_channels, T', H', W')."""
        h = _maybe_checkpoint(self.gradient_checkpointing, self.mid.block_2, self._trunk(x, None))
        return self.conv_out(F.silu(self.norm_out(h)))

    def pyramid(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> [(B, ch·mult_i, H/2^i, W/2^i) per level i, mid-after-attention]."""
        skips: list[Tensor] = []
        skips.append(self._trunk(x, skips))
        return skips


class FusionDecoder(nn.Module):
    """conv_in → mid (Res, fusion with the last content feature, attention, Res) → levels from
    the top: Res blocks, fusion (where ch_fuse[i] ≥ 0), Res blocks, upsample → GN, SiLU, conv_out.

    `up[i]` is level i (0 = full resolution) although it runs from the top, as in the checkpoints.
    """

    def __init__(self, config: ReducioConfig):
        super().__init__()
        dd, d2 = config.ddconfig, config.ddconfig_2d
        self.gradient_checkpointing = False
        self.ch_fuse = tuple(dd.ch_fuse)
        n = len(dd.ch_mult)
        window = (dd.window_size, dd.window_size)
        frames = dd.temp_res // 2**dd.f_t
        c = dd.ch_in * dd.ch_mult[-1]
        self.conv_in = conv(3, dd.z_channels, dd.ch * dd.ch_mult[-1], 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResBlock(3, dd.ch * dd.ch_mult[-1], c, dd.dropout)
        mid_context = d2.ch * d2.ch_mult[-1]
        self.mid.fuse = nn.ModuleList(
            [FusionBlock(c, mid_context, frames, window)] if config.has_mid_fusion else []
        )
        self.mid.attn_1 = SelfAttention(3, c)
        self.mid.block_2 = ResBlock(3, c, c, dd.dropout)
        levels: dict[int, nn.Module] = {}
        for i in reversed(range(n)):
            width = dd.ch_in * dd.ch_mult[i]
            level = nn.Module()
            level.block_1 = nn.ModuleList()
            for _ in range(dd.num_res_blocks):
                level.block_1.append(ResBlock(3, c, width, dd.dropout))
                c = width
            fuse = dd.ch_fuse[i]
            context = d2.ch * d2.ch_mult[fuse] if fuse >= 0 else 0
            level.fuse = nn.ModuleList([FusionBlock(c, context, frames, window)] if context else [])
            level.block_2 = nn.ModuleList(
                ResBlock(3, c, c, dd.dropout) for _ in range(dd.num_res_blocks)
            )
            # Time doubles at the top f_t levels; below them the decoder upsamples space only.
            kind = None if i == 0 else ("spatial" if i < n - dd.f_t else "full")
            level.upsample = Upsample(c, kind) if kind else None
            frames *= 2 if kind == "full" else 1
            levels[i] = level
        self.up = nn.ModuleList(levels[i] for i in range(n))
        self.norm_out = group_norm(c)
        self.conv_out = conv(3, c, dd.out_ch, 3, padding=1)

    def _res(self, block: nn.Module, h: Tensor) -> Tensor:
        return _maybe_checkpoint(self.gradient_checkpointing, block, h)

    def forward(self, z: Tensor, features: list[Tensor]) -> Tensor:
        """z (B, z_channels, T', H', W') after post_quant_conv, content features -> pixels."""
        h = self._res(self.mid.block_1, self.conv_in(z))
        for block in self.mid.fuse:
            h = block(h, features[-1])
        h = self._res(self.mid.block_2, self.mid.attn_1(h))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for block in level.block_1:
                h = self._res(block, h)
            for block in level.fuse:
                h = block(h, features[self.ch_fuse[i]])
            for block in level.block_2:
                h = self._res(block, h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ReducioVAE(nn.Module):
    """Reducio-VAE behind vidcli's autoencoder interface, plus the content condition of decode.

    Parameter names are the released checkpoints' (`encoder_3d.`, `encoder_2d.`, `decoder.`,
    `quant_conv.`, `post_quant_conv.`). `tiling` (a TilingConfig, per call or as an attribute)
    selects the reference's tiled paths with tile stride `spatial_tile` and `overlap`; at the
    config's `tile_sample_min_size` / `tile_overlap_factor` they reproduce upstream's
    `use_tiling=True`. Inputs of at most S px in H and W are one tile (= untiled); between S and
    1.25·S a second, thin tile is blended in (upstream's forward would not tile there). Clips are
    never tiled in time (T is fixed).
    """

    family = "Reducio-VAE"
    is_video = True
    scaling_factor = None
    conditioned = True
    """decode needs `content=` (the content frame, or its ContentPyramid)."""

    def __init__(self, config: ReducioConfig):
        super().__init__()
        self.config = config.validate()
        dd, d2 = config.ddconfig, config.ddconfig_2d
        n, n2 = len(dd.ch_mult), len(d2.ch_mult)
        # Space halves at every level but the last; time at the last f_t of those.
        kinds = ["spatial" if i < n - dd.f_t - 1 else "full" for i in range(n - 1)] + [None]
        self.encoder_3d = Encoder(
            3,
            dd.in_channels,
            dd.ch,
            dd.ch_mult,
            dd.num_res_blocks,
            dd.dropout,
            kinds,
            2 * dd.z_channels,
        )
        self.encoder_2d = Encoder(
            2,
            d2.in_channels,
            d2.ch,
            d2.ch_mult,
            d2.num_res_blocks,
            d2.dropout,
            ["2d"] * (n2 - 1) + [None],
            None,
            (d2.window_size, d2.window_size),
        )
        self.decoder = FusionDecoder(config)
        self.quant_conv = conv(3, 2 * dd.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = conv(3, config.embed_dim, dd.z_channels, 1)
        self.tiling: TilingConfig | None = None

    latent_channels = property(lambda self: self.config.embed_dim)
    time_compression = property(lambda self: 2**self.config.ddconfig.f_t)
    spatial_compression = property(lambda self: 2**self.config.ddconfig.f_s)
    frames = property(lambda self: self.config.ddconfig.temp_res)
    """The clip length every input must have."""
    content_index = property(lambda self: (self.frames - 1) // 2)
    """Index of the content frame in a clip (7 of 16): decode renders frames around it."""

    # ---- shapes -------------------------------------------------------------------------------

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        """Raise ShapeError (one line naming the valid values) for a size the model cannot take."""
        if frames != self.frames:
            raise ShapeError(
                f"{frames} frames: the Reducio-VAE takes clips of exactly {self.frames}"
            )
        sc = self.spatial_compression
        for name, v in (("height", height), ("width", width)):
            if v < sc or v % sc:
                raise ShapeError(
                    f"{name} {v}: the Reducio-VAE takes multiples of {sc} "
                    f"(e.g. {sc * max(1, round(v / sc))})"
                )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latent of a (frames, height, width) clip; ShapeError if bad."""
        self.check_input_shape(frames, height, width)
        sc = self.spatial_compression
        return (self.latent_channels, frames // self.time_compression, height // sc, width // sc)

    def decoded_frames(self, latent_frames: int) -> int:
        """Frames decode returns: always the clip length, from exactly frames / 2^f_t latents."""
        if latent_frames != self.frames // self.time_compression:
            raise ShapeError(
                f"{latent_frames} latent frames: the Reducio-VAE decodes exactly "
                f"{self.frames // self.time_compression}"
            )
        return self.frames

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute residual-block activations in backward instead of storing them."""
        for part in (self.encoder_3d, self.encoder_2d, self.decoder):
            part.gradient_checkpointing = enabled

    def _tile(self, tiling: TilingConfig | None) -> TilingConfig | None:
        tiling = tiling or self.tiling
        if tiling is None or not tiling.spatial:
            return None
        sc = self.spatial_compression
        if tiling.spatial_tile < sc or tiling.spatial_tile % sc:
            raise UsageError(f"spatial_tile {tiling.spatial_tile}: use a multiple of {sc} px")
        if not 0 <= tiling.overlap <= 0.5:
            raise UsageError(f"tile overlap {tiling.overlap}: use a value in [0, 0.5]")
        return tiling

    # ---- encode -------------------------------------------------------------------------------

    def posterior(self, video: Tensor, tiling: TilingConfig | None = None) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar) of a clip (B, 3, T, H, W), each (B, E, T', H', W')."""
        if video.ndim != 5 or video.shape[1] != self.config.ddconfig.in_channels:
            raise ShapeError(
                f"encode input of shape {tuple(video.shape)}: expected (B, 3, T, H, W)"
            )
        self.check_input_shape(*video.shape[2:])
        tiling = self._tile(tiling)

        def run(clip: Tensor) -> Tensor:
            return self.quant_conv(self.encoder_3d(clip))

        if tiling is None:
            moments = run(video)
        else:
            moments = tiled_moments(
                run, video, tiling.spatial_tile, tiling.overlap, self.spatial_compression
            )
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self,
        video: Tensor,
        tiling: TilingConfig | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Clip (B, 3, T, H, W) in [-1, 1] -> latent (B, E, T', H', W').

        `sample=True`: the reference latent, layer_norm(mean + std·ε) with ε from `generator`
        (what DiT data must use). Default: layer_norm(mean), deterministic.
        """
        mean, logvar = self.posterior(video, tiling)
        if not sample:
            return normalize_latent(mean)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return normalize_latent(sample_posterior(mean, logvar, noise.to(mean.device)))

    def content_frame(self, video: Tensor) -> Tensor:
        """The clip's content frame (B, 3, H, W): frame (T − 1)//2 of (B, 3, T, H, W)."""
        return video[:, :, (video.shape[2] - 1) // 2]

    def encode_content(self, frame: Tensor, tiling: TilingConfig | None = None) -> ContentPyramid:
        """The decoder's condition from a content frame (B, 3, H, W) in [-1, 1]."""
        c2 = 2**self.config.ddconfig_2d.f_s
        if frame.ndim != 4 or frame.shape[1] != self.config.ddconfig_2d.in_channels:
            raise ShapeError(f"content frame of shape {tuple(frame.shape)}: expected (B, 3, H, W)")
        if frame.shape[-2] % c2 or frame.shape[-1] % c2:
            raise ShapeError(f"content frame {tuple(frame.shape[-2:])}: H, W multiples of {c2}")
        tiling = self._tile(tiling)
        h, w = frame.shape[-2:]
        if tiling is None:
            return ContentPyramid([[self.encoder_2d.pyramid(frame)]], None, h, w)
        grid = tiled_pyramid(self.encoder_2d.pyramid, frame, tiling.spatial_tile, tiling.overlap)
        return ContentPyramid(grid, tiling.spatial_tile, h, w)

    # ---- decode -------------------------------------------------------------------------------

    def decode(
        self, z: Tensor, content: Tensor | ContentPyramid, tiling: TilingConfig | None = None
    ) -> Tensor:
        """Latent (B, E, T', H', W') + content frame (B, 3, H, W) or its pyramid -> (B, 3, T, H, W).

        The content frame becomes frame `content_index` of the clip (approximately: it is a
        condition, not a copy). A pyramid must come from `encode_content` with the same tiling.
        """
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ShapeError(
                f"decode input of shape {tuple(z.shape)}: expected (B, {self.latent_channels}, "
                "T', H', W')"
            )
        self.decoded_frames(z.shape[2])
        tiling = self._tile(tiling)
        if isinstance(content, Tensor):
            content = self.encode_content(content, tiling)
        sc = self.spatial_compression
        size = (z.shape[-2] * sc, z.shape[-1] * sc)
        if (content.height, content.width) != size:
            raise ShapeError(
                f"content frame {content.height}x{content.width}: this latent decodes to "
                f"{size[0]}x{size[1]}; pass a content frame of that size"
            )
        stride = tiling.spatial_tile if tiling else None
        if content.tile != stride:
            raise UsageError(
                f"content pyramid tiled at {content.tile}, decode tiled at {stride}: "
                "encode_content with the decode's tiling"
            )
        batch = content.grid[0][0][0].shape[0]
        if batch != z.shape[0]:
            raise ShapeError(
                f"{batch} content frames for {z.shape[0]} latents: pass one per latent"
            )

        def run(latent: Tensor, features: list[Tensor]) -> Tensor:
            return self.decoder(self.post_quant_conv(latent), features)

        if tiling is None:
            return run(z, content.features)
        return tiled_decode(run, z, content.grid, tiling.spatial_tile, tiling.overlap, sc)

    def forward(self, video: Tensor) -> Tensor:
        """Reconstruction: decode(encode(video), content = the clip's content frame)."""
        return self.decode(self.encode(video), self.content_frame(video))
