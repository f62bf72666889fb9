"""Other codebases' configs and key names -> ours (Open-Sora / MIT efficientvit parameter names).

diffusers `AutoencoderDC` folders (config.json + diffusion_pytorch_model.safetensors) and
Open-Sora's nested `DCAEConfig` JSON are translated here; Open-Sora and MIT checkpoints need no
key map.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from vidcli.errors import CheckpointError
from vidcli.models.dcae.config import DCAEConfig

# ---------------------------------------------------------------------------------------------
# diffusers AutoencoderDC
# ---------------------------------------------------------------------------------------------

_DIFFUSERS_BLOCKS = {"ResBlock": "ResBlock", "EfficientViTBlock": "EViT"}
_DIFFUSERS_NORMS = {"rms_norm": "rms", "batch_norm": "bn"}


def _per_stage(value: Any, n: int) -> tuple:
    return tuple(value) if isinstance(value, list | tuple) else (value,) * n


def config_from_diffusers(cfg: dict[str, Any]) -> DCAEConfig:
    """Our config from an AutoencoderDC config.json dict."""
    n = len(cfg["encoder_block_out_channels"])
    enc_types = _per_stage(cfg.get("encoder_block_types", "ResBlock"), n)
    dec_types = _per_stage(cfg.get("decoder_block_types", "ResBlock"), n)
    dec_norms = _per_stage(cfg.get("decoder_norm_types", "rms_norm"), n)
    dec_acts = _per_stage(cfg.get("decoder_act_fns", "silu"), n)
    for s in range(n):
        # diffusers fixes the GLU half of EViT blocks to RMSNorm + SiLU; we use the stage's.
        if dec_types[s] == "EfficientViTBlock" and (dec_norms[s], dec_acts[s]) != (
            "rms_norm",
            "silu",
        ):
            raise CheckpointError(
                f"AutoencoderDC decoder stage {s}: EfficientViTBlock with "
                f"{dec_norms[s]}/{dec_acts[s]} is not supported (only rms_norm/silu)"
            )
    unknown = [t for t in enc_types + dec_types if t not in _DIFFUSERS_BLOCKS]
    if unknown:
        raise CheckpointError(
            f"AutoencoderDC block type {unknown[0]!r} is not one of {list(_DIFFUSERS_BLOCKS)}"
        )
    return DCAEConfig(
        is_video=False,
        in_channels=cfg.get("in_channels", 3),
        latent_channels=cfg.get("latent_channels", 32),
        encoder_widths=tuple(cfg["encoder_block_out_channels"]),
        decoder_widths=tuple(cfg["decoder_block_out_channels"]),
        encoder_depths=tuple(cfg["encoder_layers_per_block"]),
        decoder_depths=tuple(cfg["decoder_layers_per_block"]),
        encoder_block_types=tuple(_DIFFUSERS_BLOCKS[t] for t in enc_types),
        decoder_block_types=tuple(_DIFFUSERS_BLOCKS[t] for t in dec_types),
        encoder_qkv_scales=_scales(cfg, "encoder", n),
        decoder_qkv_scales=_scales(cfg, "decoder", n),
        attention_head_dim=cfg.get("attention_head_dim", 32),
        decoder_norms=tuple(_DIFFUSERS_NORMS[x] for x in dec_norms),
        decoder_acts=dec_acts,
        downsample="pixel_unshuffle"
        if cfg.get("downsample_block_type") == "pixel_unshuffle"
        else "conv",
        upsample="interpolate"
        if cfg.get("upsample_block_type", "pixel_shuffle") == "interpolate"
        else "pixel_shuffle",
        encoder_out_shortcut=cfg.get("encoder_out_shortcut", True),
        decoder_in_shortcut=cfg.get("decoder_in_shortcut", True),
        decoder_out_act=cfg.get("decoder_conv_act_fn", "relu"),
        temporal_downsample=(False,) * n,
        temporal_upsample=(False,) * n,
        scaling_factor=cfg.get("scaling_factor"),
    )


def _scales(cfg: dict[str, Any], side: str, n: int) -> tuple[tuple[int, ...], ...]:
    # diffusers' constructor default is (5,) on the attention stages; ResBlock stages ignore it
    return tuple(tuple(s) for s in cfg.get(f"{side}_qkv_multiscales", ((5,),) * n))


# Inside one block: diffusers suffix -> ours (first match wins; \1 is the captured tail).
_DIFFUSERS_BLOCK_KEYS = [
    (r"conv1\.(weight|bias)", r"main.conv1.conv.\1"),
    (r"conv2\.weight", r"main.conv2.conv.weight"),
    (r"norm\.(.+)", r"main.conv2.norm.\1"),
    (r"attn\.to_qkv_multiscale\.(\d+)\.proj_in\.weight", r"context_module.main.aggreg.\1.0.weight"),
    (
        r"attn\.to_qkv_multiscale\.(\d+)\.proj_out\.weight",
        r"context_module.main.aggreg.\1.1.weight",
    ),
    (r"attn\.to_out\.weight", r"context_module.main.proj.conv.weight"),
    (r"attn\.norm_out\.(.+)", r"context_module.main.proj.norm.\1"),
    (r"conv_out\.conv_inverted\.(weight|bias)", r"local_module.main.inverted_conv.conv.\1"),
    (r"conv_out\.conv_depth\.(weight|bias)", r"local_module.main.depth_conv.conv.\1"),
    (r"conv_out\.conv_point\.weight", r"local_module.main.point_conv.conv.weight"),
    (r"conv_out\.norm\.(.+)", r"local_module.main.point_conv.norm.\1"),
]


def _diffusers_top_keys(cfg: DCAEConfig) -> list[tuple[str, str]]:
    """Whole-key patterns outside the stages; some depend on the stem kind."""
    down = "main.conv." if cfg.downsample == "conv" else "main.conv.conv."
    stem = "conv." if cfg.downsample == "conv" else "conv.conv."
    return [
        (r"encoder\.conv_in\.conv\.(weight|bias)", rf"encoder.project_in.{stem}\1"),
        (r"encoder\.conv_in\.(weight|bias)", r"encoder.project_in.conv.\1"),
        (
            r"encoder\.down_blocks\.(\d+)\.(\d+)\.conv\.(weight|bias)",
            rf"encoder.stages.\1.op_list.\2.{down}\3",
        ),
        (r"encoder\.conv_out\.(weight|bias)", r"encoder.project_out.main.op_list.0.conv.\1"),
        (r"decoder\.conv_in\.(weight|bias)", r"decoder.project_in.main.conv.\1"),
        (
            r"decoder\.up_blocks\.(\d+)\.0\.conv\.(weight|bias)",
            r"decoder.stages.\1.op_list.0.main.conv.conv.\2",
        ),
        (r"decoder\.norm_out\.(weight|bias)", r"decoder.project_out.op_list.0.\1"),
        (r"decoder\.conv_out\.conv\.(weight|bias)", r"decoder.project_out.op_list.2.conv.conv.\1"),
        (r"decoder\.conv_out\.(weight|bias)", r"decoder.project_out.op_list.2.conv.\1"),
    ]


_DIFFUSERS_QKV = re.compile(r"attn\.to_([qkv])\.weight$")
_DIFFUSERS_STAGE = re.compile(r"(encoder|decoder)\.(?:down|up)_blocks\.(\d+)\.(\d+)\.(.+)")


def state_dict_from_diffusers(sd: dict[str, Tensor], cfg: DCAEConfig) -> dict[str, Tensor]:
    """Rename diffusers keys to ours; fuse to_q/to_k/to_v (in that row order) into one qkv conv."""
    top = [(re.compile(p + "$"), r) for p, r in _diffusers_top_keys(cfg)]
    block = [(re.compile(p + "$"), r) for p, r in _DIFFUSERS_BLOCK_KEYS]
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    unmapped = []
    for key, value in sd.items():
        new = next((pat.sub(rep, key) for pat, rep in top if pat.match(key)), None)
        if new is None and (m := _DIFFUSERS_STAGE.match(key)):
            side, s, j, tail = m.groups()
            prefix = f"{side}.stages.{s}.op_list.{j}."
            if q := _DIFFUSERS_QKV.match(tail):
                qkv.setdefault(prefix, {})[q.group(1)] = value
                continue
            new = next((prefix + pat.sub(rep, tail) for pat, rep in block if pat.match(tail)), None)
        if new is None:
            unmapped.append(key)
            continue
        if new.endswith("proj.conv.weight"):  # Linear (C, C') -> 1x1 conv (C, C', 1, 1)
            value = value[:, :, None, None]
        out[new] = value
    for prefix, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(
                f"AutoencoderDC weights: {prefix} lacks to_q/to_k/to_v ({sorted(parts)})"
            )
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[prefix + "context_module.main.qkv.conv.weight"] = fused[..., None, None]
    if unmapped:
        raise CheckpointError(
            f"AutoencoderDC weights: {len(unmapped)} key(s) with no mapping, e.g. {unmapped[:3]}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Open-Sora / MIT efficientvit nested DCAEConfig JSON
# ---------------------------------------------------------------------------------------------

_REF_BLOCKS = {"ResBlock": ("ResBlock", ()), "EViT_GLU": ("EViT", ()), "EViTS5_GLU": ("EViT", (5,))}
_REF_NORMS = {"rms3d": "rms", "trms2d": "rms", "rms2d": "rms", "bn2d": "bn", "bn3d": "bn"}
_REF_DOWN = {"Conv": "conv", "ConvPixelUnshuffle": "pixel_unshuffle"}
_REF_UP = {"InterpolateConv": "interpolate", "ConvPixelShuffle": "pixel_shuffle"}


def config_from_reference(cfg: dict[str, Any]) -> DCAEConfig:
    """Our config from Open-Sora's nested DCAEConfig ({"encoder": {...}, "decoder": {...}, ...})."""
    enc, dec = cfg["encoder"], cfg["decoder"]
    n = len(enc["width_list"])
    try:
        enc_blocks = [_REF_BLOCKS[b] for b in _per_stage(enc.get("block_type", "ResBlock"), n)]
        dec_blocks = [_REF_BLOCKS[b] for b in _per_stage(dec.get("block_type", "ResBlock"), n)]
        dec_norms = tuple(_REF_NORMS[x] for x in _per_stage(dec.get("norm", "trms2d"), n))
        enc_norm = _REF_NORMS[enc.get("norm", "trms2d")]
        down = _REF_DOWN[enc.get("downsample_block_type", "ConvPixelUnshuffle")]
        up = _REF_UP[dec.get("upsample_block_type", "ConvPixelShuffle")]
    except KeyError as e:
        raise CheckpointError(f"DC-AE reference config: unsupported value {e}") from None
    if enc.get("out_norm") or enc.get("out_act") or enc.get("double_latent"):
        raise CheckpointError(
            "DC-AE reference config: encoder out_norm/out_act/double_latent unsupported"
        )
    is_video = bool(enc.get("is_video", False)) and not cfg.get("is_image_model", False)
    tdown = tuple(enc.get("temporal_downsample") or (False,) * n)
    tup = tuple(dec.get("temporal_upsample") or (False,) * n)
    return DCAEConfig(
        is_video=is_video,
        in_channels=cfg.get("in_channels", enc.get("in_channels", 3)),
        latent_channels=cfg.get("latent_channels", enc["latent_channels"]),
        encoder_widths=tuple(enc["width_list"]),
        decoder_widths=tuple(dec["width_list"]),
        encoder_depths=tuple(enc["depth_list"]),
        decoder_depths=tuple(dec["depth_list"]),
        encoder_block_types=tuple(b for b, _ in enc_blocks),
        decoder_block_types=tuple(b for b, _ in dec_blocks),
        encoder_qkv_scales=tuple(s for _, s in enc_blocks),
        decoder_qkv_scales=tuple(s for _, s in dec_blocks),
        encoder_norm=enc_norm,
        encoder_act=enc.get("act", "silu"),
        decoder_norms=dec_norms,
        decoder_acts=_per_stage(dec.get("act", "silu"), n),
        downsample=down,
        upsample=up,
        downsample_shortcut=enc.get("downsample_shortcut", "averaging") is not None,
        upsample_shortcut=dec.get("upsample_shortcut", "duplicating") is not None,
        encoder_out_shortcut=enc.get("out_shortcut", "averaging") is not None,
        decoder_in_shortcut=dec.get("in_shortcut", "duplicating") is not None,
        decoder_out_act=dec.get("out_act", "relu"),
        temporal_downsample=tdown if is_video else (False,) * n,
        temporal_upsample=tup if is_video else (False,) * n,
        scaling_factor=cfg.get("scaling_factor"),
    )
