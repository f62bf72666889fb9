"""Memory plans: what a generation or training run needs on the GPU, before any weight is loaded.

Everything here is a function of recipe sections and shapes. Models are built on the `meta`
device (no memory, no weights), parameters are counted, and activation peaks are measured by
running the real forward pass on `meta` tensors (`vidcli.meta_memory`).

Units: GB = 1e9 bytes throughout (`--gpu-memory 80` means 80e9 bytes).

A generation plan chooses an offload mode, `none` (all models resident), `model` (one
component on the GPU at a time: text encoders -> t2i -> DiT -> AE, like diffusers' model CPU
offload) or `blocks` (`model`, and the DiT's transformer blocks streamed to the GPU one at a
time), and an AE decode: untiled, or the tile size with the least redundant work whose peak
fits. Between `none` and `model` the least decode work wins (ties: less offload); `blocks` is
used only when neither fits. A training plan counts weights, gradients and
AdamW states per ZeRO stage and rank count, and activations with and without per-block
checkpointing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidcli.devices import dtype_name
from vidcli.errors import UsageError
from vidcli.meta_memory import measure_peak, param_count, saved_for_backward
from vidcli.recipe import AESection, DiTSection, Recipe, TextSection

GB = 1e9
RESERVED_GB = 1.0
"""Kept free on every device: CUDA context, cuBLAS / cuDNN workspaces."""
ACTIVATION_MARGIN = 1.2
"""Activation estimates are multiplied by this: allocator rounding and fragmentation."""
OFFLOAD_MODES = ("none", "model", "blocks")
# Tile sizes tried for the AE decode, as (spatial px, temporal frames), largest first.
SPATIAL_TILES = (1024, 768, 512, 384, 256, 192, 128, 64)
TEMPORAL_TILES = (128, 64, 32, 16, 8)
TILE_OVERLAP = 0.25
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
T5_TOKENS, MINILM_TOKENS = 512, 32


def _size(dtype: torch.dtype) -> int:
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
    if text.backend == "minilm":
        return text.max_length or MINILM_TOKENS, 384, 384
    t5 = _hf_config(text.t5_path, "t5")
    clip = _hf_config(text.clip_path, "clip")
    return text.max_length or T5_TOKENS, t5["d_model"], clip["hidden_size"]


def text_encoder_params(text: TextSection) -> dict[str, int]:
    """Parameters of the `[text]` encoders, from their config.json (or the released configs).

    Closed forms of the Hugging Face classes vidcli loads (checked against them in the tests):
    T5EncoderModel, CLIPTextModel, BertModel without its pooler.
    """
    if text.backend == "minilm":
        folder = Path(text.minilm_path) if text.minilm_path else _minilm_dir()
        c = json.loads((folder / "config.json").read_text())
        d, i = c["hidden_size"], c["intermediate_size"]
        embed = (c["vocab_size"] + c["max_position_embeddings"] + c["type_vocab_size"] + 2) * d
        layer = 4 * (d * d + d) + 2 * d * i + i + d + 4 * d
        return {"text:minilm": embed + c["num_hidden_layers"] * layer}
    t5, clip = _hf_config(text.t5_path, "t5"), _hf_config(text.clip_path, "clip")
    d, inner = t5["d_model"], t5["num_heads"] * t5["d_kv"]
    ff = (3 if t5.get("feed_forward_proj", "relu").startswith("gated") else 2) * d * t5["d_ff"]
    t5_layer = 4 * d * inner + ff + 2 * d
    t5_params = t5["vocab_size"] * d + t5["num_layers"] * t5_layer + d
    t5_params += t5.get("relative_attention_num_buckets", 32) * t5["num_heads"]
    h, i = clip["hidden_size"], clip["intermediate_size"]
    clip_layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h
    clip_params = (clip["vocab_size"] + clip["max_position_embeddings"] + 2) * h
    clip_params += clip["num_hidden_layers"] * clip_layer
    return {"text:t5": t5_params, "text:clip": clip_params}


def _minilm_dir() -> Path:
    from vidcli.models.text import _bundled_minilm_dir

    return _bundled_minilm_dir()


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


def _dit_inputs(dit: nn.Module, rows: int, latent: tuple[int, ...], text_tokens: int, dtype):
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


def _stream_tensors(dit: nn.Module, rows: int, latent, text_tokens: int, dtype):
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


def _outside_blocks(dit: nn.Module) -> nn.Module:
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
    inputs = _dit_inputs(dit, rows, latent, text_tokens, dtype)
    held = sum(t.nbytes for t in inputs.values() if t is not None)
    outside = measure_peak(lambda: _outside_blocks(dit)(**inputs))
    x, ctx, vec, cos, sin = _stream_tensors(dit, rows, latent, text_tokens, dtype)
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


# ------------------------------------------------------------------------------ generation


@dataclass
class ComponentMemory:
    """One model of the pipeline: parameters and weight bytes at the compute dtype."""

    name: str
    params: int
    weight_gb: float


@dataclass
class GeneratePlan:
    """What `vidcli generate` will hold on the device, and the offload / tiling it chose."""

    device: str
    dtype: str
    gpu_memory_gb: float | None
    latent_shape: list[int]
    image_tokens: int
    text_tokens: int
    cfg_rows: int
    components: list[ComponentMemory]
    dit_activation_gb: float
    decode_untiled_gb: float
    decode_gb: float
    decode_work: float
    """Voxels decoded / voxels of the video: the cost of overlapping tiles (1 = untiled)."""
    offload: str
    tiling: dict[str, Any] | None
    phases_gb: dict[str, float]
    peak_gb: float
    fits: bool
    smallest_device_gb: float
    notes: list[str] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        lines = [
            f"plan for {self.device} ({self.dtype}), "
            f"{'no limit' if self.gpu_memory_gb is None else f'{self.gpu_memory_gb:g} GB'}",
            f"latent {self.latent_shape}: {self.image_tokens} image + {self.text_tokens} text "
            f"tokens, {self.cfg_rows} CFG rows per denoiser call",
        ]
        lines += [
            f"  {c.name:<12} {c.params / 1e9:7.3f} B params  {c.weight_gb:7.2f} GB"
            for c in self.components
        ]
        tiles = (
            "untiled"
            if self.tiling is None
            else f"tiles {self.tiling['spatial_tile']} px / {self.tiling['temporal_tile']} f"
        )
        lines += [
            f"DiT activations {self.dit_activation_gb:.2f} GB; AE decode {self.decode_gb:.2f} GB "
            f"({tiles}, {self.decode_work:.2f}x the untiled work; untiled "
            f"{self.decode_untiled_gb:.2f} GB)",
            "phases: " + ", ".join(f"{k} {v:.2f} GB" for k, v in self.phases_gb.items()),
            f"offload: {self.offload}; peak {self.peak_gb:.2f} GB: "
            + ("fits" if self.fits else f"does not fit; needs {self.smallest_device_gb:.1f} GB"),
        ]
        return lines + [f"note: {n}" for n in self.notes]


def plan_generate(
    recipe: Recipe,
    device: torch.device,
    dtype: torch.dtype,
    gpu_memory_gb: float | None,
    batch_size: int = 1,
    image_condition: bool = False,
) -> GeneratePlan:
    """The generation plan for `recipe.sample`'s size on a device with `gpu_memory_gb`.

    gpu_memory_gb None: no limit (CPU), so nothing is offloaded or tiled beyond the recipe.
    """
    sample = recipe.sample
    ae = meta_autoencoder(recipe.ae)
    latent = ae.latent_shape(sample.frames, sample.height, sample.width)
    dit = meta_dit(recipe.dit, latent[0], recipe.text)
    size = _size(dtype)
    notes: list[str] = []

    components = [
        ComponentMemory(name, n, n * size / GB)
        for name, n in text_encoder_params(recipe.text).items()
    ]
    text_tokens, _, _ = text_widths(recipe.text)
    t2i_components, t2i_act, t2i_dit = _t2i_stage(recipe, dtype, text_tokens)
    components += t2i_components
    components.append(ComponentMemory("dit", param_count(dit), param_count(dit) * size / GB))
    components.append(ComponentMemory("ae", param_count(ae), param_count(ae) * size / GB))

    # t2i2v conditions the video on its first frame: image CFG adds a third row.
    cfg_rows = (3 if image_condition or t2i_dit is not None else 2) * batch_size
    dit.to(dtype)
    dit_act = dit_inference_peak(dit, cfg_rows, latent, text_tokens, dtype) * ACTIVATION_MARGIN / GB
    p = dit.config.patch_size
    image_tokens = latent[1] * (latent[2] // p) * (latent[3] // p)

    # Decoded video on the device: the decoder's output plus its fp32 copy before `.cpu()`.
    out_voxels = batch_size * 3 * sample.frames * sample.height * sample.width
    video_gb = out_voxels * (size + 4) / GB
    decode_per_voxel = _decode_bytes_per_voxel(ae, dtype) * ACTIVATION_MARGIN
    untiled_gb = decode_per_voxel * out_voxels / 3 / GB + video_gb

    weights = {c.name: c.weight_gb for c in components}
    text_gb = sum(v for k, v in weights.items() if k.startswith("text:"))
    t2i_gb = sum(v for k, v in weights.items() if k.startswith("t2i:"))

    def streamed(model: nn.Module) -> float:
        """GB on the device while blocks stream: all but the blocks, plus two blocks in flight."""
        rest = param_count(model) - _block_params(model)
        return (rest + 2 * _largest_block_params(model)) * size / GB

    dit_streamed = streamed(dit)
    t2i_streamed = streamed(t2i_dit) + weights["t2i:ae"] if t2i_dit is not None else 0.0
    budget = None if gpu_memory_gb is None else gpu_memory_gb - RESERVED_GB

    def phases(offload: str, decode_gb: float) -> dict[str, float]:
        if offload == "none":
            resident = sum(weights.values())
            out = {"text": resident, "dit": resident + dit_act, "decode": resident + decode_gb}
            if t2i_dit is not None:
                out["t2i"] = resident + t2i_act
            return out
        out = {"text": text_gb}
        if t2i_dit is not None:
            out["t2i"] = (t2i_streamed if offload == "blocks" else t2i_gb) + t2i_act
        out["dit"] = (dit_streamed if offload == "blocks" else weights["dit"]) + dit_act
        out["decode"] = weights["ae"] + decode_gb
        return out

    options = list(_decode_options(ae, sample, untiled_gb, decode_per_voxel, video_gb))
    if not recipe.ae.tiling and budget is None:
        options = options[:1]
    # Moving whole models on and off the device costs a few seconds per prompt, decoding
    # overlapping tiles costs a fraction of every decode, streaming blocks costs a transfer of
    # the DiT per denoiser call: least decode work wins between `none` and `model`, and
    # `blocks` is the last resort.
    chosen = None
    for modes in (OFFLOAD_MODES[:2], OFFLOAD_MODES[2:]):
        fitting = [
            (work, OFFLOAD_MODES.index(offload), offload, tiling, decode_gb)
            for offload in modes
            for tiling, decode_gb, work in options
            if budget is None or max(phases(offload, decode_gb).values()) <= budget
        ]
        if fitting:
            work, _, offload, tiling, decode_gb = min(fitting, key=lambda f: f[:2])
            chosen = offload, tiling, decode_gb, work, phases(offload, decode_gb)
            break
    least = min(options, key=lambda o: o[1])
    smallest = max(phases("blocks", least[1]).values()) + RESERVED_GB
    fits = chosen is not None
    if chosen is None:
        chosen = ("blocks", *least, phases("blocks", least[1]))
        notes.append(
            f"does not fit in {gpu_memory_gb:g} GB even with block offload and the smallest AE "
            f"tiles; the smallest device that fits has {smallest:.1f} GB"
        )
    offload, tiling, decode_gb, work, ph = chosen
    if recipe.text.backend == "t5-clip" and not Path(recipe.text.t5_path, "config.json").is_file():
        notes.append("T5 / CLIP sizes from the released t5-v1_1-xxl / clip-vit-large-patch14")
    return GeneratePlan(
        device=str(device),
        dtype=dtype_name(dtype),
        gpu_memory_gb=gpu_memory_gb,
        latent_shape=list(latent),
        image_tokens=image_tokens,
        text_tokens=text_tokens,
        cfg_rows=cfg_rows,
        components=components,
        dit_activation_gb=dit_act,
        decode_untiled_gb=untiled_gb,
        decode_gb=decode_gb,
        decode_work=work,
        offload=offload,
        tiling=tiling,
        phases_gb=ph,
        peak_gb=max(ph.values()) + RESERVED_GB,
        fits=fits,
        smallest_device_gb=smallest,
        notes=notes,
    )


def _t2i_stage(recipe: Recipe, dtype: torch.dtype, text_tokens: int):
    """(components, activation GB, its DiT) of the t2i2v image stage; ([], 0, None) when off.

    The image DiT (Flux) is guidance-distilled: one row per prompt, at about `resolution`²
    pixels; its AE decodes a single image.
    """
    t2i = getattr(recipe, "t2i", None)
    if t2i is None or not t2i.enabled:
        return [], 0.0, None
    from vidcli.models import build_autoencoder
    from vidcli.models.mmdit import build_dit

    size = _size(dtype)
    dit = build_dit(t2i.preset, device="meta", **t2i.overrides).to(dtype)
    ae = build_autoencoder(t2i.ae_preset, device="meta", **t2i.ae_overrides).eval().to(dtype)
    sc = ae.spatial_compression
    latent = (
        dit.config.in_channels // dit.config.patch_size**2,
        1,
        t2i.resolution // sc,
        t2i.resolution // sc,
    )
    act = dit_inference_peak(dit, 1, latent, text_tokens, dtype)
    z = torch.empty(1, ae.latent_channels, 1, *latent[2:], device="meta", dtype=dtype)
    act = max(act, measure_peak(lambda: ae.decode(z)))
    components = [
        ComponentMemory(f"t2i:{name}", param_count(m), param_count(m) * size / GB)
        for name, m in (("dit", dit), ("ae", ae))
    ]
    return components, act * ACTIVATION_MARGIN / GB, dit


def _block_params(dit: nn.Module) -> int:
    return sum(param_count(b) for b in (*dit.double_blocks, *dit.single_blocks))


def _largest_block_params(dit: nn.Module) -> int:
    return max(param_count(b) for b in (*dit.double_blocks, *dit.single_blocks))


def _decode_bytes_per_voxel(ae: nn.Module, dtype: torch.dtype) -> float:
    """Decoder activation peak per output voxel (all frames, pixels and colours / 3).

    Measured on one reference tile on `meta`: the decoder is fully convolutional, so its peak
    grows linearly with the tile volume (checked in tests/test_memory_plan.py).
    """
    ae.to(dtype)
    t_lat, s_lat = 8, 8
    frames = ae.decoded_frames(t_lat)
    sc = ae.spatial_compression
    z = torch.empty(1, ae.latent_channels, t_lat, s_lat, s_lat, device="meta", dtype=dtype)
    peak = measure_peak(lambda: ae._decode_raw(z))
    return peak / (frames * (s_lat * sc) ** 2)


def _decode_options(ae, sample, untiled_gb: float, per_voxel: float, video_gb: float):
    """(tiling or None, decode GB, work) from untiled to the smallest tile, least work first.

    work = voxels decoded / voxels of the video (overlapping tiles decode some voxels twice), so
    the plan tiles only as much as memory requires: big devices decode at untiled speed.
    """
    from vidcli.models.dcae.tiling import tile_spans

    yield None, untiled_gb, 1.0
    sc, tc = ae.spatial_compression, ae.time_compression
    _, t_lat, h_lat, w_lat = ae.latent_shape(sample.frames, sample.height, sample.width)
    options = {}
    for spatial in SPATIAL_TILES:
        for temporal in TEMPORAL_TILES:
            if spatial % sc or temporal % tc:
                continue
            spans = (
                tile_spans(t_lat, max(temporal // tc, 2), TILE_OVERLAP, min(2, t_lat)),
                tile_spans(h_lat, spatial // sc, TILE_OVERLAP),
                tile_spans(w_lat, spatial // sc, TILE_OVERLAP),
            )
            if all(len(s) == 1 for s in spans):
                continue  # one tile covers the whole video: that is the untiled decode
            sizes = [max(b - a for a, b in axis) for axis in spans]
            tile_voxels = ae.decoded_frames(sizes[0]) * sizes[1] * sizes[2] * sc * sc
            work = 1.0
            for axis, total in zip(spans, (t_lat, h_lat, w_lat), strict=True):
                work *= sum(b - a for a, b in axis) / total
            key = (round(work, 6), -tile_voxels)
            options.setdefault(key, (spatial, temporal, tile_voxels, work))
    for _, (spatial, temporal, voxels, work) in sorted(options.items()):
        tiling = {"spatial_tile": spatial, "temporal_tile": temporal, "overlap": TILE_OVERLAP}
        yield tiling, per_voxel * voxels / GB + video_gb, work


# ------------------------------------------------------------------------------ training


@dataclass
class TrainPlan:
    """What one rank of `vidcli train-dit` holds: model states per ZeRO stage, activations."""

    world: int
    zero_stage: int
    precision: str
    params: int
    trainable_params: int
    tokens_per_sample: int
    batch_size: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    activations_gb: float
    activations_checkpointed_gb: float
    by_zero_stage_gb: dict[str, float]
    grad_checkpointing: bool
    gpu_memory_gb: float | None
    peak_gb: float
    fits: bool
    notes: list[str] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        limit = "no limit" if self.gpu_memory_gb is None else f"{self.gpu_memory_gb:g} GB"
        return [
            f"train-dit plan per rank ({self.world} rank(s), ZeRO-{self.zero_stage}, "
            f"{self.precision}, {limit})",
            f"params {self.params / 1e9:.3f} B ({self.trainable_params / 1e9:.3f} B trainable), "
            f"{self.tokens_per_sample} tokens/sample, batch {self.batch_size}",
            f"weights {self.weights_gb:.2f} GB, grads {self.grads_gb:.2f} GB, "
            f"AdamW {self.optimizer_gb:.2f} GB",
            "model states by ZeRO stage: "
            + ", ".join(f"{k} {v:.2f} GB" for k, v in self.by_zero_stage_gb.items()),
            f"activations {self.activations_gb:.2f} GB, checkpointed "
            f"{self.activations_checkpointed_gb:.2f} GB -> checkpointing "
            f"{'on' if self.grad_checkpointing else 'off'}",
            f"peak {self.peak_gb:.2f} GB: " + ("fits" if self.fits else "does not fit"),
            *(f"note: {n}" for n in self.notes),
        ]


def model_state_bytes(
    params: int, trainable: int, zero_stage: int, world: int, weight_bytes: int = 4
) -> dict[str, float]:
    """Per-rank bytes of weights, gradients and AdamW states (ZeRO paper, Rajbhandari et al. §3).

    Weights stay in `weight_bytes` (fp32: the launcher runs bf16 through autocast, so they are
    also the master copy); gradients have the weights' size; AdamW keeps two fp32 moments.
    ZeRO-1 partitions the optimizer states over ranks, ZeRO-2 also the gradients, ZeRO-3 also
    the weights. Frozen parameters (LoRA) have weights only.
    """
    weights = params * weight_bytes
    grads = trainable * weight_bytes
    optimizer = trainable * 8
    return {
        "weights": weights / (world if zero_stage >= 3 else 1),
        "grads": grads / (world if zero_stage >= 2 else 1),
        "optimizer": optimizer / (world if zero_stage >= 1 else 1),
    }


def plan_train(
    recipe: Recipe,
    latent: tuple[int, int, int, int],
    gpu_memory_gb: float | None,
    world: int | None = None,
    trainable_params: int | None = None,
) -> TrainPlan:
    """The per-rank training plan for a DiT on latents (C, T, H, W).

    trainable_params: parameters that get gradients and optimizer states (None = all; the
    LoRA mode passes its adapter count here).
    """
    launcher, train = recipe.launcher, recipe.train
    world = world or launcher.nproc
    dit = meta_dit(recipe.dit, latent[0], recipe.text)
    params = param_count(dit)
    if trainable_params is None and recipe.lora.rank:  # LoRA: only the adapters train
        from vidcli.train.lora import trainable_parameter_count

        trainable_params = trainable_parameter_count(dit, recipe.lora)
        params += trainable_params  # the adapters are weights of their own
    trainable = params if trainable_params is None else trainable_params
    text_tokens, _, _ = text_widths(recipe.text)
    states = model_state_bytes(params, trainable, launcher.zero_stage, world)
    if launcher.offload_optimizer:
        states["optimizer"] = 0.0
    if launcher.offload_params and launcher.zero_stage == 3:
        states["weights"] = 0.0
    by_stage = {
        f"zero{s}": sum(model_state_bytes(params, trainable, s, world).values()) / GB
        for s in range(4)
    }

    act_dtype = torch.bfloat16 if launcher.precision == "bf16" else torch.float32
    full, checkpointed = _train_activations(dit, train.batch_size, latent, text_tokens, act_dtype)
    model_gb = sum(states.values()) / GB
    budget = None if gpu_memory_gb is None else gpu_memory_gb - RESERVED_GB
    wants_ckpt = recipe.dit.grad_checkpointing
    if budget is not None and model_gb + full > budget:
        wants_ckpt = True
    peak = model_gb + (checkpointed if wants_ckpt else full)
    notes = []
    if launcher.zero_stage == 3 and train.ema_decay > 0:
        notes.append("ZeRO-3 with EMA is refused: set [train] ema_decay = 0 or zero_stage <= 2")
    if trainable_params is None:
        notes.append("all parameters trainable (LoRA counts come from the [lora] section)")
    p = dit.config.patch_size
    return TrainPlan(
        world=world,
        zero_stage=launcher.zero_stage,
        precision=launcher.precision,
        params=params,
        trainable_params=trainable,
        tokens_per_sample=latent[1] * (latent[2] // p) * (latent[3] // p),
        batch_size=train.batch_size,
        weights_gb=states["weights"] / GB,
        grads_gb=states["grads"] / GB,
        optimizer_gb=states["optimizer"] / GB,
        activations_gb=full,
        activations_checkpointed_gb=checkpointed,
        by_zero_stage_gb=by_stage,
        grad_checkpointing=wants_ckpt,
        gpu_memory_gb=gpu_memory_gb,
        peak_gb=peak + RESERVED_GB,
        fits=budget is None or peak <= budget,
        notes=notes,
    )


def _train_activations(dit, batch: int, latent, text_tokens: int, dtype) -> tuple[float, float]:
    """(GB saved for backward without checkpointing, GB with every block checkpointed).

    Without checkpointing every block keeps what autograd saves (measured on one double and one
    single block, times their counts); checkpointed, each block keeps only its inputs and one
    block at a time is recomputed in backward.
    """
    dit.to(dtype).requires_grad_(True)
    inputs = _dit_inputs(dit, batch, latent, text_tokens, dtype)
    rest = _outside_blocks(dit).requires_grad_(True)
    outside = saved_for_backward(lambda: rest(**inputs), rest)
    x, ctx, vec, cos, sin = _stream_tensors(dit, batch, latent, text_tokens, dtype)
    blocks, kept, largest = 0, 0, 0
    if len(dit.double_blocks):
        one = saved_for_backward(lambda: dit.double_blocks[0](x, ctx, vec, cos, sin), dit)
        blocks += len(dit.double_blocks) * one
        kept += len(dit.double_blocks) * (x.nbytes + ctx.nbytes)
        largest = max(largest, one)
    if len(dit.single_blocks):
        h = torch.cat((ctx, x), dim=1)
        one = saved_for_backward(lambda: dit.single_blocks[0](h, vec, cos, sin), dit)
        blocks += len(dit.single_blocks) * one
        kept += len(dit.single_blocks) * h.nbytes
        largest = max(largest, one)
    full = outside + blocks
    checkpointed = outside + kept + largest
    return full * ACTIVATION_MARGIN / GB, checkpointed * ACTIVATION_MARGIN / GB


# ------------------------------------------------------------------------------ entry points


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


def generate_plan(
    recipe: Recipe,
    device: str | None,
    dtype: str | None,
    gpu_memory_gb: float | None,
    batch_size: int = 1,
    image_condition: bool = False,
) -> GeneratePlan:
    """`vidcli generate --plan`: resolve `--device` / `--dtype` / `--gpu-memory`, then plan."""
    from vidcli.devices import resolve_device, resolve_dtype

    where = resolve_device(device, require_available=False)
    return plan_generate(
        recipe,
        where,
        resolve_dtype(dtype, where),
        device_memory_gb(where, gpu_memory_gb),
        batch_size=batch_size,
        image_condition=image_condition,
    )


def train_plan(recipe: Recipe, gpu_memory_gb: float | None) -> TrainPlan:
    """`vidcli train-dit --plan`: latent shape from `[ae]` and `[data]`, device memory from
    `--gpu-memory` or the local CUDA device."""
    from vidcli.devices import resolve_device

    data = recipe.data
    latent = meta_autoencoder(recipe.ae).latent_shape(data.num_frames, data.height, data.width)
    memory = device_memory_gb(resolve_device(None), gpu_memory_gb)
    return plan_train(recipe, latent, memory)
