"""Reducio-VAE configs in the layout of upstream's `model.params` (and the HF `config.json`).

`ReducioConfig` holds `embed_dim`, `ddconfig` (the 3-D motion encoder and the fusion decoder),
`ddconfig_2d` (the 2-D content encoder) and the tiling sizes, with upstream's field names, so a
config dict from the reference YAML loads as is. Fields that upstream reads but that change
nothing at inference (`resolution`, `use_checkpoint`, `fp32_attention`, `z_channels` of the 2-D
encoder, ...) are kept so configs round-trip; values vidcli does not implement are refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vidcli.errors import UsageError


@dataclass(frozen=True)
class MotionConfig:
    """`ddconfig`: the 3-D motion encoder and the fusion decoder (upstream names)."""

    ch: int = 128
    """Encoder width unit: level i is ch·ch_mult[i] wide (also the decoder conv_in's unit)."""
    ch_in: int = 128
    """Decoder width unit: decoder level i is ch_in·ch_mult[i] wide."""
    f_t: int = 2
    """log2 of the temporal compression (time is halved at the last f_t levels)."""
    out_ch: int = 3
    """Decoded channels."""
    z_channels: int = 16
    """Channels between encoder/decoder and (post_)quant_conv; the encoder emits 2× this."""
    resolution: int = 256
    """Training resolution (informative only)."""
    in_channels: int = 3
    """Pixel channels."""
    temp_res: int = 16
    """Frames per clip: fixed, the decoder's positional tables have this many rows (÷ 2^f_t)."""
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4, 4)
    """Width multipliers per level; spatial compression is 2^(len − 1)."""
    ch_fuse: tuple[int, ...] = (-1, -1, 2, 3, -1, -1)
    """Per decoder level: the content feature its fusion block reads, or −1 for none."""
    fuse_type: str = "attn"
    """Fusion kind; only cross-attention ("attn") is implemented (the released one)."""
    num_res_blocks: int = 2
    """Residual blocks per level (the decoder runs this many before and after fusion)."""
    attn_resolutions: tuple[int, ...] = ()
    """Per-level self-attention; must be empty (as released)."""
    use_3d_conv: bool = True
    """3-D convolutions throughout (the released models)."""
    upsample_first: bool = True
    """Decoder order fuse → upsample, as released."""
    fuse_mid: bool = True
    """Cross-attention in the decoder's mid block (when the encoders differ in depth)."""
    use_checkpoint: bool = True
    """Upstream's gradient checkpointing switch (training only; see set_gradient_checkpointing)."""
    pos_embed_mode: str = "t"
    """Fusion positional term: a sinusoid per frame ("t"), the only one implemented."""
    fp32_attention: bool = True
    """Read by nothing upstream; kept for round trips."""
    window_size: int = 128
    """Cross-attention window (w×w content positions) for large content maps. Upstream also
    windows the 3-D mid self-attention beyond w×w latent positions, but that path fails there;
    vidcli attends globally."""
    dropout: float = 0.0
    """Residual-block dropout (0 as released)."""

    @property
    def f_s(self) -> int:
        """log2 of the spatial compression."""
        return len(self.ch_mult) - 1


@dataclass(frozen=True)
class ContentConfig:
    """`ddconfig_2d`: the 2-D encoder of the content frame (upstream names)."""

    ch: int = 128
    """Width unit: level i is ch·ch_mult[i] wide."""
    z_channels: int = 4
    """Unused (the content encoder has no output conv); kept for round trips."""
    out_ch: int = 3
    """Unused; kept for round trips."""
    resolution: int = 256
    """Training resolution (informative only)."""
    in_channels: int = 3
    """Pixel channels of the content frame."""
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Width multipliers per level; the map shrinks 2^(len − 1)×."""
    num_res_blocks: int = 2
    """Residual blocks per level."""
    attn_resolutions: tuple[int, ...] = ()
    """Must be empty (as released)."""
    dropout: float = 0.0
    """Residual-block dropout."""
    out_z: bool = False
    """False: the encoder returns its feature list (the only mode Reducio uses)."""
    use_checkpoint: bool = True
    """Training-only switch; kept for round trips."""
    fp32_attention: bool = True
    """Read by nothing upstream; kept for round trips."""
    window_size: int = 256
    """Mid self-attention window (w×w positions) for large content maps (upstream's default)."""

    @property
    def f_s(self) -> int:
        """log2 of the content encoder's spatial reduction."""
        return len(self.ch_mult) - 1


@dataclass(frozen=True)
class ReducioConfig:
    """One Reducio-VAE: upstream's `ReducioVAE(...)` arguments that define the model."""

    embed_dim: int = 16
    """Latent channels (mean and logvar have this many each)."""
    ddconfig: MotionConfig = dataclasses.field(default_factory=MotionConfig)
    """Motion encoder + fusion decoder."""
    ddconfig_2d: ContentConfig = dataclasses.field(default_factory=ContentConfig)
    """Content-frame encoder."""
    tile_sample_min_size: int = 256
    """Reference tiling: tile stride S in pixels (tiles are 1.25·S)."""
    tile_overlap_factor: float = 0.25
    """Reference tiling: overlap factor (tile = (1 + f)·S, blend = f·tile in latent units)."""

    def validate(self) -> ReducioConfig:
        """Refuse configs vidcli does not implement (one line naming the field)."""
        dd, d2 = self.ddconfig, self.ddconfig_2d
        unsupported = {
            "ddconfig.fuse_type": (dd.fuse_type, "attn"),
            "ddconfig.pos_embed_mode": (dd.pos_embed_mode, "t"),
            "ddconfig.use_3d_conv": (dd.use_3d_conv, True),
            "ddconfig.upsample_first": (dd.upsample_first, True),
            "ddconfig.attn_resolutions": (tuple(dd.attn_resolutions), ()),
            "ddconfig_2d.attn_resolutions": (tuple(d2.attn_resolutions), ()),
            "ddconfig_2d.out_z": (d2.out_z, False),
        }
        for name, (got, want) in unsupported.items():
            if got != want:
                raise UsageError(f"Reducio {name} = {got!r}: vidcli implements {want!r} only")
        if len(dd.ch_fuse) != len(dd.ch_mult):
            raise UsageError(
                f"Reducio ddconfig.ch_fuse has {len(dd.ch_fuse)} entries; ch_mult has "
                f"{len(dd.ch_mult)}"
            )
        bad = [i for i in dd.ch_fuse if not -1 <= i < len(d2.ch_mult)]
        if bad:
            raise UsageError(
                f"Reducio ddconfig.ch_fuse {list(dd.ch_fuse)}: entries are −1 or a content level "
                f"0..{len(d2.ch_mult) - 1}"
            )
        if not 0 <= dd.f_t <= dd.f_s or dd.temp_res % 2**dd.f_t:
            raise UsageError(
                f"Reducio ddconfig.f_t = {dd.f_t}: needs 0 <= f_t <= {dd.f_s} and temp_res "
                f"({dd.temp_res}) divisible by 2^f_t"
            )
        return self

    @property
    def has_mid_fusion(self) -> bool:
        """Upstream builds the mid fusion block only when the two encoders differ in depth."""
        return self.ddconfig.fuse_mid and self.ddconfig.f_s != self.ddconfig_2d.f_s

    def to_dict(self) -> dict[str, Any]:
        """Upstream's layout, lists for tuples (JSON-ready)."""
        return _lists(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "Reducio config") -> ReducioConfig:
        """Parse upstream's layout; unknown keys raise a UsageError naming them."""
        parts = {
            "ddconfig": MotionConfig,
            "ddconfig_2d": ContentConfig,
        }
        values = _checked(cls, raw, source)
        for key, kind in parts.items():
            if key in values:
                values[key] = kind(**_checked(kind, values[key], f"{source} {key}"))
        return cls(**values).validate()

    def with_overrides(self, **overrides: Any) -> ReducioConfig:
        """Top-level fields replaced; `ddconfig` / `ddconfig_2d` take dicts of their fields."""
        raw = self.to_dict()
        for key, value in overrides.items():
            if key in ("ddconfig", "ddconfig_2d") and isinstance(value, dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return ReducioConfig.from_dict(raw, "Reducio overrides")


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_lists(v) for v in value]
    return value


def _checked(kind: type, raw: Any, source: str) -> dict[str, Any]:
    """`raw` as constructor kwargs of dataclass `kind`: a dict with known keys, lists as tuples."""
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: expected a mapping of fields, got {type(raw).__name__}")
    names = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise UsageError(f"{source}: unknown field(s) {unknown}; allowed: {', '.join(names)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


REDUCIO_PRESETS: dict[str, ReducioConfig] = {
    # microsoft/Reducio-VAE reducio-ft4-fs32-attn23.ckpt, configs/autoencoder/
    # reducio_kl_ft4_fs32_z16_attn23.yaml: 16 frames -> 16 x 4 x H/32 x W/32; 437,095,763 params.
    "reducio-ft4": ReducioConfig(),
    # reducio-ft2-fs32-attn23.ckpt (reducio_kl_ft2_...yaml, only f_t differs): 16 x 8 x H/32 x W/32;
    # 432,379,219 params.
    "reducio-ft2": ReducioConfig(ddconfig=MotionConfig(f_t=1)),
    # vidcli's small trainable model with the released geometry (16 frames, 4x32x32, 16 ch).
    "reducio-tiny": ReducioConfig(
        ddconfig=MotionConfig(ch=32, ch_in=32, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=1),
        ddconfig_2d=ContentConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=1),
    ),
}
