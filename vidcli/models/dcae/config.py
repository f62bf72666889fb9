"""Config dataclasses of the DC-AE family: architecture (`DCAEConfig`), tiling (`TilingConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vidcli.errors import UsageError

BLOCK_TYPES = ("ResBlock", "EViT")
NORMS = ("rms", "bn")
ACTS = ("silu", "relu")
DOWNSAMPLES = ("conv", "pixel_unshuffle")
UPSAMPLES = ("interpolate", "pixel_shuffle")
PER_STAGE_FIELDS = (
    "encoder_widths",
    "decoder_widths",
    "encoder_depths",
    "decoder_depths",
    "encoder_block_types",
    "decoder_block_types",
    "encoder_qkv_scales",
    "decoder_qkv_scales",
    "decoder_norms",
    "decoder_acts",
    "temporal_downsample",
    "temporal_upsample",
)


@dataclass(frozen=True)
class DCAEConfig:
    """Architecture of one DC-AE: stage s runs at 1/2^s of the input resolution (0 = full size)."""

    is_video: bool = True
    """3-D convs over (T, H, W) when True (Open-Sora's video AE); else 2-D (MIT's image AE)."""
    in_channels: int = 3
    """Channels of the pixel input and of the reconstruction."""
    latent_channels: int = 128
    """Channels of the latent."""
    encoder_widths: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    """Channels of each encoder stage; spatial compression is 2^(stages - 1)."""
    decoder_widths: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    """Channels of each decoder stage (same count as the encoder's)."""
    encoder_depths: tuple[int, ...] = (2, 2, 2, 3, 3, 3)
    """Blocks per encoder stage; only stage 0 may be 0 (then a pixel-unshuffle stem replaces it)."""
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3, 3, 3)
    """Blocks per decoder stage; only stage 0 may be 0 (then a pixel-shuffle tail replaces it)."""
    encoder_block_types: tuple[str, ...] = ("ResBlock",) * 3 + ("EViT",) * 3
    """Block kind per encoder stage: "ResBlock" (two convs) or "EViT" (attention + GLU conv)."""
    decoder_block_types: tuple[str, ...] = ("ResBlock",) * 3 + ("EViT",) * 3
    """Block kind per decoder stage."""
    encoder_qkv_scales: tuple[tuple[int, ...], ...] = ((),) * 3 + ((5,),) * 3
    """Kernel sizes of the multi-scale q/k/v aggregation branches per encoder stage (EViT only)."""
    decoder_qkv_scales: tuple[tuple[int, ...], ...] = ((),) * 3 + ((5,),) * 3
    """Kernel sizes of the multi-scale q/k/v aggregation branches per decoder stage."""
    attention_head_dim: int = 32
    """Channels per attention head; EViT stage widths must be multiples of it."""
    encoder_norm: str = "rms"
    """Norm of every encoder block: "rms" (channel RMSNorm, weight and bias) or "bn" (BatchNorm)."""
    encoder_act: str = "silu"
    """Activation of every encoder block: "silu" or "relu"."""
    decoder_norms: tuple[str, ...] = ("rms",) * 6
    """Norm per decoder stage ("rms" or "bn")."""
    decoder_acts: tuple[str, ...] = ("silu",) * 6
    """Activation per decoder stage ("silu" or "relu")."""
    downsample: str = "conv"
    """Down blocks' main path: "conv" (strided conv) or "pixel_unshuffle" (conv, unshuffle)."""
    upsample: str = "interpolate"
    """Up blocks' main path: "interpolate" (nearest x2, conv) or "pixel_shuffle" (conv, shuffle)."""
    downsample_shortcut: bool = True
    """Add the parameter-free space-to-channel + channel-averaging shortcut to every down block."""
    upsample_shortcut: bool = True
    """Add the parameter-free channel-duplicating + channel-to-space shortcut to every up block."""
    encoder_out_shortcut: bool = True
    """Add the channel-averaging shortcut to the encoder's output conv."""
    decoder_in_shortcut: bool = True
    """Add the channel-duplicating shortcut to the decoder's input conv."""
    decoder_out_act: str = "relu"
    """Activation between the decoder's final RMSNorm and its output conv."""
    temporal_downsample: tuple[bool, ...] = (False, False, False, True, True, False)
    """Per encoder stage: its down block also halves T (video only)."""
    temporal_upsample: tuple[bool, ...] = (False, False, False, True, True, False)
    """Per decoder stage: its up block also doubles T (video only)."""
    scaling_factor: float | None = None
    """encode() divides the encoder output by it, decode() multiplies first; None: no scaling."""

    @property
    def num_stages(self) -> int:
        """Number of resolution stages."""
        return len(self.encoder_widths)

    def validate(self) -> None:
        """Raise UsageError naming the first inconsistent field and the numbers involved."""
        n = self.num_stages
        if n < 1:
            raise UsageError("DC-AE config: encoder_widths must name at least one stage")
        for name in PER_STAGE_FIELDS:
            if len(getattr(self, name)) != n:
                raise UsageError(
                    f"DC-AE config: {name} has {len(getattr(self, name))} entries, "
                    f"expected {n} (one per stage, like encoder_widths)"
                )
        for name, allowed in [
            ("encoder_block_types", BLOCK_TYPES),
            ("decoder_block_types", BLOCK_TYPES),
            ("decoder_norms", NORMS),
            ("decoder_acts", ACTS),
        ]:
            for v in getattr(self, name):
                _check_choice(name, v, allowed)
        _check_choice("encoder_norm", self.encoder_norm, NORMS)
        _check_choice("encoder_act", self.encoder_act, ACTS)
        _check_choice("decoder_out_act", self.decoder_out_act, ACTS)
        _check_choice("downsample", self.downsample, DOWNSAMPLES)
        _check_choice("upsample", self.upsample, UPSAMPLES)
        if not self.is_video and (any(self.temporal_downsample) or any(self.temporal_upsample)):
            raise UsageError("DC-AE config: temporal_downsample/upsample need is_video=True")
        shuffles = self.downsample == "pixel_unshuffle" or self.upsample == "pixel_shuffle"
        if shuffles and (any(self.temporal_downsample) or any(self.temporal_upsample)):
            raise UsageError(
                "DC-AE config: temporal down/up-sampling needs conv/interpolate blocks"
            )
        if list(self.temporal_downsample) != list(self.temporal_upsample):
            raise UsageError("DC-AE config: temporal_downsample and temporal_upsample must match")
        for side in ("encoder", "decoder"):
            widths, depths = getattr(self, f"{side}_widths"), getattr(self, f"{side}_depths")
            if any(d < 0 for d in depths) or any(d == 0 for d in depths[1:]):
                raise UsageError(
                    f"DC-AE config: {side}_depths {list(depths)}: only stage 0 may be 0"
                )
            if depths[0] == 0 and n < 2:
                raise UsageError(f"DC-AE config: {side}_depths[0] = 0 needs at least two stages")
            for s, (kind, w) in enumerate(
                zip(getattr(self, f"{side}_block_types"), widths, strict=True)
            ):
                if kind == "EViT" and depths[s] > 0 and w % self.attention_head_dim:
                    raise UsageError(
                        f"DC-AE config: {side} stage {s} is EViT with width {w}, not a multiple "
                        f"of attention_head_dim {self.attention_head_dim}"
                    )
            for s in range(n - 1):
                big = 8 if self.temporal_downsample[s] else 4
                w_in, w_out = widths[s], widths[s + 1]
                if (side == "encoder" and (w_in * big) % w_out) or (
                    side == "decoder" and (w_out * 4) % w_in
                ):
                    raise UsageError(
                        f"DC-AE config: {side} widths {w_in} and {w_out} of stages {s}, {s + 1} "
                        "do not divide for the shortcut (need 4*W_in % W_out == 0 down, "
                        "4*W_out % W_in == 0 up)"
                    )
            # Only the latent shortcut groups the last width's channels (averaged out of the
            # encoder, duplicated into the decoder); without it the conv maps any widths.
            flag = "encoder_out_shortcut" if side == "encoder" else "decoder_in_shortcut"
            if getattr(self, flag) and widths[-1] % self.latent_channels:
                raise UsageError(
                    f"DC-AE config: last {side} width {widths[-1]} is not a multiple of "
                    f"latent_channels {self.latent_channels} (needed by {flag} = true)"
                )
        if self.downsample == "pixel_unshuffle" and any(w % 4 for w in self.encoder_widths[1:]):
            raise UsageError("DC-AE config: pixel_unshuffle down blocks need widths % 4 == 0")
        if self.scaling_factor is not None and self.scaling_factor <= 0:
            raise UsageError(f"DC-AE config: scaling_factor {self.scaling_factor} must be > 0")

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent pixel along H and W."""
        return 2 ** (self.num_stages - 1)

    @property
    def time_compression(self) -> int:
        """Frames per latent frame for long clips (1 for image models)."""
        return 2 ** sum(self.temporal_downsample) if self.is_video else 1


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"DC-AE config: {name} {value!r} is not one of {', '.join(allowed)}")


def config_from_dict(data: dict[str, Any]) -> DCAEConfig:
    """Our config from a JSON-like dict (lists become tuples); unknown keys raise UsageError."""
    names = [f.name for f in dataclasses.fields(DCAEConfig)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UsageError(
            f"DC-AE config: unknown field(s) {', '.join(unknown)}; fields: {', '.join(names)}"
        )
    return DCAEConfig(**{k: _as_tuple(v) for k, v in data.items()})


def config_to_dict(cfg: DCAEConfig) -> dict[str, Any]:
    """A JSON-ready dict of every field."""
    return dataclasses.asdict(cfg)


def _as_tuple(v: Any) -> Any:
    return tuple(_as_tuple(x) for x in v) if isinstance(v, list | tuple) else v


@dataclass
class TilingConfig:
    """Tiled encode/decode: the input is cut into overlapping tiles whose outputs are cross-faded.

    The output always has the untiled shape; one tile covering the input gives the untiled result.
    """

    spatial_tile: int = 256
    """Tile height and width in pixels (a multiple of the model's spatial compression)."""
    temporal_tile: int = 32
    """Tile length in frames (a multiple of the model's time compression)."""
    overlap: float = 0.25
    """Fraction of a tile shared with its neighbour, blended with a linear ramp (0 to 0.5)."""
    spatial: bool = True
    """Tile along H and W."""
    temporal: bool = True
    """Tile along T (video models)."""
