"""Sizes the memory plans share: units, margins, text encoders, DiT shapes and peaks on `meta`.

Everything here is a function of recipe sections and shapes. Models are built on the `meta`
device (no memory, no weights), parameters are counted, and activation peaks are measured by
running the real forward pass on `meta` tensors (`vidcli.plans.meta`).

Units: GB = 1e9 bytes throughout (`--gpu-memory 80` means 80e9 bytes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidcli.errors import UsageError
from vidcli.plans.meta import measure_peak, param_count
from vidcli.recipe import AESection, DiTSection, TextSection

GB = 1e9
RESERVED_GB = 1.0
"""Kept free on every device: CUDA context, cuBLAS / cuDNN workspaces."""
ACTIVATION_MARGIN = 1.2
"""Activation estimates are multiplied by this: allocator rounding and fragmentation."""
# Text encoder configurations assumed when their folders are not downloaded yet
# (google/t5-v1_1-xxl and openai/clip-vit-large-patch14 config.json values).
T5_XXL_CONFIG = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
)
CLIP_L_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
)


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes of one element of `dtype`."""
    return torch.empty((), dtype=dtype).element_size()


# ------------------------------------------------------------------------------ models on meta


def meta_autoencoder(ae: AESection) -> nn.Module:
    """The `[ae]` model's architecture on `meta` (preset + overrides; weights are not read)."""
    from vidcli.models import build_autoencoder

    overrides = dict(ae.overrides)
    if ae.scaling_factor is not None:
        overrides["scaling_factor"] = ae.scaling_factor
    return build_autoencoder(ae.preset, device="meta", **overrides).eval()


def text_widths(text: TextSection) -> tuple[int, int, int]:
    """(tokens per prompt, token width, pooled width) of the `[text]` encoder."""
    from vidcli.models.text import TextEncoderConfig

    defaults = TextEncoderConfig()  # what `text_encoder_from_section` runs when max_length = 0
    if text.backend == "minilm":
        width = _minilm_config(text)["hidden_size"]  # tokens and pooled vector alike
        return text.max_length or defaults.minilm_max_length, width, width
    t5 = _hf_config(text.t5_path, "t5")
    clip = _hf_config(text.clip_path, "clip")
    return text.max_length or defaults.t5_max_length, t5["d_model"], clip["hidden_size"]


def text_encoder_params(text: TextSection) -> dict[str, int]:
    """Parameters of the `[text]` encoders, from their config.json (or the released configs).

    Closed forms of the Hugging Face classes vidcli loads (checked against them in the tests):
    T5EncoderModel, CLIPTextModel, BertModel without its pooler.
    """
    if text.backend == "minilm":
        c = _minilm_config(text)
        d = c["hidden_size"]
        embed = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"] + 2) * d
        layer = _post_ln_layer_params(d, c["intermediate_size"])
        return {"text:minilm": embed + c["num_hidden_layers"] * layer}
    t5, clip = _hf_config(text.t5_path, "t5"), _hf_config(text.clip_path, "clip")
    d, inner = t5["d_model"], t5["num_heads"] * t5["d_kv"]
    ff = (3 if t5.get("feed_forward_proj", "relu").startswith("gated") else 2) * d * t5["d_ff"]
    t5_layer = 4 * d * inner + ff + 2 * d
    t5_params = t5["vocab_size"] * d + t5["num_layers"] * t5_layer + d
    t5_params += t5.get("relative_attention_num_buckets", 32) * t5["num_heads"]
    h = clip["hidden_size"]
    clip_params = (clip["vocab_size"] + clip["max_position_embeddings"] + 2) * h
    clip_params += clip["num_hidden_layers"] * _post_ln_layer_params(h, clip["intermediate_size"])
    return {"text:t5": t5_params, "text:clip": clip_params}


def _post_ln_layer_params(d: int, inner: int) -> int:
    """One BERT / CLIP encoder layer: q, k, v, out projections, a two-layer MLP, two LayerNorms."""
    return 4 * (d * d + d) + 2 * d * inner + inner + d + 4 * d


def _minilm_config(text: TextSection) -> dict[str, Any]:
    """config.json of the `[text]` MiniLM folder (the bundled one when no path is set)."""
    from vidcli.models.text import _bundled_minilm_dir

    folder = Path(text.minilm_path) if text.minilm_path else _bundled_minilm_dir()
    return json.loads((folder / "config.json").read_text())


def _hf_config(folder: str, kind: str) -> dict[str, Any]:
    """config.json of a T5 / CLIP text folder, or the released model's values when absent."""
    known = T5_XXL_CONFIG if kind == "t5" else CLIP_L_TEXT_CONFIG
    path = Path(folder) / "config.json" if folder else None
    if path is None or not path.is_file():
        return dict(known)
    data = json.loads(path.read_text())
    return {**known, **(data.get("text_config", data) if kind == "clip" else data)}


def meta_dit(dit: DiTSection, latent_channels: int, text: TextSection) -> nn.Module:
    """The `[dit]` transformer on `meta`, sized like `dit_from_section` sizes it."""
    from vidcli.models.mmdit import build_dit, resolve_config
    from vidcli.models.mmdit.config import MMDiTConfig

    overrides = dict(dit.overrides)
    if dit.patch_size:
        overrides["patch_size"] = dit.patch_size
    folder_config = Path(dit.path) / "config.json" if dit.path else None
    if folder_config is not None and folder_config.is_file():
        data = json.loads(folder_config.read_text())
        base = MMDiTConfig.from_dict(data, source=str(folder_config))
        return build_dit(resolve_config(base, **overrides), device="meta")
    patch = resolve_config(dit.preset, **overrides).patch_size
    if not dit.path:  # random init: sized for the AE and text encoder, as dit_from_section does
        _, token_dim, pooled_dim = text_widths(text)
        overrides.setdefault("in_channels", latent_channels * patch * patch)
        overrides.setdefault("context_in_dim", token_dim)
        overrides.setdefault("vec_in_dim", pooled_dim)
    return build_dit(dit.preset, device="meta", **overrides)


def dit_inputs(dit: nn.Module, rows: int, latent: tuple[int, ...], text_tokens: int, dtype):
    """Meta inputs of one denoiser call: `rows` samples of a latent (C, T, H, W)."""
    c = dit.config
    p = c.patch_size
    _, T, H, W = latent
    L = T * (H // p) * (W // p)

    def empty(*shape):
        return torch.empty(shape, device="meta", dtype=dtype)

    return dict(
        img=empty(rows, L, c.in_channels),
        img_ids=empty(rows, L, 3),
        txt=empty(rows, text_tokens, c.context_in_dim),
        txt_ids=empty(rows, text_tokens, 3),
        timesteps=empty(rows),
        y_vec=empty(rows, c.vec_in_dim),
        cond=empty(rows, L, c.cond_channels) if c.cond_embed else None,
        guidance=empty(rows) if c.guidance_embed else None,
    )


def stream_tensors(dit: nn.Module, rows: int, latent, text_tokens: int, dtype):
    """The residual streams every block reads: x (image), ctx (text), vec, cos, sin (meta)."""
    c = dit.config
    p = c.patch_size
    _, T, H, W = latent
    L_img, D = T * (H // p) * (W // p), c.hidden_size
    x = torch.empty(rows, L_img, D, device="meta", dtype=dtype)
    ctx = torch.empty(rows, text_tokens, D, device="meta", dtype=dtype)
    vec = torch.empty(rows, D, device="meta", dtype=dtype)
    angles = (rows, L_img + text_tokens, c.head_dim // 2)
    cos = torch.empty(angles, device="meta", dtype=torch.float32)
    return x, ctx, vec, cos, cos.new_empty(angles)


def outside_blocks(dit: nn.Module) -> nn.Module:
    """The same DiT without blocks: embedders and final layer only (on meta)."""
    from dataclasses import replace

    from vidcli.models.mmdit import build_dit

    config = replace(dit.config, depth=0, depth_single_blocks=0)
    return build_dit(config, device="meta").to(next(dit.parameters()).dtype)


def dit_inference_peak(dit: nn.Module, rows: int, latent, text_tokens: int, dtype) -> int:
    """Peak activation bytes of one denoiser call without grad.

    Blocks run one after another, so the peak is the streams they share (inputs, x, ctx, the
    joined h of the single blocks, vec, RoPE angles) plus the largest block's own peak; only one
    double and one single block are run (on meta), which keeps the plan fast.
    """
    inputs = dit_inputs(dit, rows, latent, text_tokens, dtype)
    held = sum(t.nbytes for t in inputs.values() if t is not None)
    outside = measure_peak(lambda: outside_blocks(dit)(**inputs))
    x, ctx, vec, cos, sin = stream_tensors(dit, rows, latent, text_tokens, dtype)
    streams = x.nbytes + ctx.nbytes + vec.nbytes + cos.nbytes + sin.nbytes
    peak = outside
    if len(dit.double_blocks):
        block = measure_peak(lambda: dit.double_blocks[0](x, ctx, vec, cos, sin))
        peak = max(peak, streams + block)
    if len(dit.single_blocks):
        h = torch.cat((ctx, x), dim=1)
        block = measure_peak(lambda: dit.single_blocks[0](h, vec, cos, sin))
        peak = max(peak, streams + h.nbytes + block)
    return held + peak


def block_params(dit: nn.Module) -> int:
    return sum(param_count(b) for b in (*dit.double_blocks, *dit.single_blocks))


def largest_block_params(dit: nn.Module) -> int:
    return max(param_count(b) for b in (*dit.double_blocks, *dit.single_blocks))


def device_memory_gb(device: torch.device, requested: float | None) -> float | None:
    """`--gpu-memory`, else the CUDA device's total memory; None (no limit) on the CPU."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return None
    if not torch.cuda.is_available():
        raise UsageError(
            f"--plan --device {device}: no CUDA device here to read its memory from; "
            "pass --gpu-memory GB (e.g. --gpu-memory 80)"
        )
    return torch.cuda.get_device_properties(device).total_memory / GB
