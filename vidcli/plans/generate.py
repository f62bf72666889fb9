"""The generation plan: what `vidcli generate` holds on the device, before any weight is loaded.

A generation plan chooses an offload mode, `none` (all models resident), `model` (one
component on the GPU at a time: text encoders -> t2i -> DiT -> AE, like diffusers' model CPU
offload) or `blocks` (`model`, and the DiT's transformer blocks streamed to the GPU one at a
time), and an AE decode: untiled, or the tile size with the least redundant work whose peak
fits. Between `none` and `model` the least decode work wins (ties: less offload); `blocks` is
used only when neither fits, and the plan states what its streaming costs per denoiser call: the
blocks' bytes over the host-to-device link (`LINK_GB_S`, overridable). A quantized DiT
(`[sample] quantize`) counts its quantized weights. A quantized DiT and a compiled AE decoder
(`[sample] compile_ae`: its frozen weights live in the compiled graph) cannot move, so with
either every model stays resident (offload `none`) or the plan does not fit.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidcli.devices import dtype_name
from vidcli.models.content import needs_content
from vidcli.plans.meta import measure_peak, param_count
from vidcli.plans.sizes import (
    ACTIVATION_MARGIN,
    GB,
    RESERVED_GB,
    block_params,
    device_memory_gb,
    dit_inference_peak,
    dtype_size,
    largest_block_params,
    meta_autoencoder,
    meta_dit,
    text_encoder_params,
    text_widths,
)
from vidcli.plans.state import refusal, run_state
from vidcli.quantize import quantized_bytes
from vidcli.recipe import Recipe, SampleSection
from vidcli.sequence_parallel import exchange_elements, token_share

OFFLOAD_MODES = ("none", "model", "blocks")
# Tile sizes tried for the AE decode, as (spatial px, temporal frames), largest first.
SPATIAL_TILES = (1024, 768, 512, 384, 256, 192, 128, 64)
TEMPORAL_TILES = (128, 64, 32, 16, 8)
TILE_OVERLAP = 0.25
LINK_GB_S = 25.0
"""Host-to-device bandwidth the plan assumes for block streaming, GB/s: PCIe 4.0 x16's effective
rate from pinned memory (`generate --plan --link-gb-s` overrides it)."""


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
    cache_state_gb: float
    """What `[sample] cache` keeps between denoiser calls, on the device (`plans.state`)."""
    sparse_residual_gb: float
    """Sparse attention's cached residuals (`[sample] sparse_residual`)."""
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
    sequence_parallel: int = 1
    """`[launcher] sequence_parallel` N: the numbers are one rank's (its 1/N of the image tokens;
    the DiT's weights on every rank)."""
    all_to_all_gb: float = 0.0
    """One attention call's exchange buffers per rank, inside `dit_activation_gb` (N > 1)."""
    quantize: str = "none"
    """`[sample] quantize`: the DiT's weights in `components` are the quantized bytes."""
    link_gb_s: float = LINK_GB_S
    """The host-to-device bandwidth assumed for block streaming."""
    streamed_gb: float = 0.0
    """The DiT blocks' bytes copied to the device per denoiser call (offload `blocks`; else 0)."""

    @property
    def transfer_ms_per_call(self) -> float:
        """The block copies of one denoiser call at `link_gb_s` (0 without block streaming)."""
        return self.streamed_gb * GB / (self.link_gb_s * 1e9) * 1e3

    def stdout_lines(self) -> list[str]:
        lines = [
            f"plan for {self.device} ({self.dtype}"
            + ("" if self.quantize == "none" else f", DiT linears {self.quantize}")
            + "), "
            f"{'no limit' if self.gpu_memory_gb is None else f'{self.gpu_memory_gb:g} GB'}",
            f"latent {self.latent_shape}: {self.image_tokens} image + {self.text_tokens} text "
            f"tokens, {self.cfg_rows} CFG rows per denoiser call",
        ]
        if self.sequence_parallel > 1:
            n = self.sequence_parallel
            lines.append(
                f"sequence parallel {n}: per rank {-(-self.image_tokens // n)} image + "
                f"{self.text_tokens} text tokens, all-to-all buffers {self.all_to_all_gb:.2f} GB "
                "(every number below is one rank's)"
            )
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
            f"run-time state: cache {self.cache_state_gb:.2f} GB, sparse residuals "
            f"{self.sparse_residual_gb:.2f} GB",
            f"DiT activations {self.dit_activation_gb:.2f} GB; AE decode {self.decode_gb:.2f} GB "
            f"({tiles}, {self.decode_work:.2f}x the untiled work; untiled "
            f"{self.decode_untiled_gb:.2f} GB)",
            "phases: " + ", ".join(f"{k} {v:.2f} GB" for k, v in self.phases_gb.items()),
            f"offload: {self.offload}; peak {self.peak_gb:.2f} GB: "
            + ("fits" if self.fits else f"does not fit; needs {self.smallest_device_gb:.1f} GB"),
        ]
        if self.streamed_gb:
            lines.insert(
                -1,
                f"block streaming: {self.streamed_gb:.2f} GB per denoiser call, "
                f"{self.transfer_ms_per_call:.0f} ms at {self.link_gb_s:g} GB/s (prefetched: "
                "hidden behind a block's compute when that takes longer)",
            )
        return lines + [f"note: {n}" for n in self.notes]


def plan_generate(
    recipe: Recipe,
    device: torch.device,
    dtype: torch.dtype,
    gpu_memory_gb: float | None,
    batch_size: int = 1,
    image_condition: bool = False,
    link_gb_s: float = LINK_GB_S,
) -> GeneratePlan:
    """The generation plan for `recipe.sample`'s size on a device with `gpu_memory_gb`.

    gpu_memory_gb None: no limit (CPU), so nothing is offloaded or tiled beyond the recipe.
    link_gb_s: host-to-device bandwidth, for the block-streaming transfer time.
    """
    sample = recipe.sample
    ae = meta_autoencoder(recipe.ae).to(dtype)
    latent = ae.latent_shape(sample.frames, sample.height, sample.width)
    dit = meta_dit(recipe.dit, latent[0], recipe.text).to(dtype)
    size = dtype_size(dtype)
    notes: list[str] = []

    components = [
        ComponentMemory(name, n, n * size / GB)
        for name, n in text_encoder_params(recipe.text).items()
    ]
    text_tokens, _, _ = text_widths(recipe.text)
    t2i_components, t2i_act, t2i_dit = _t2i_stage(recipe, dtype, text_tokens, batch_size)
    components += t2i_components
    dit_gb = quantized_bytes(dit, sample.quantize, size) / GB
    components.append(ComponentMemory("dit", param_count(dit), dit_gb))
    components.append(ComponentMemory("ae", param_count(ae), param_count(ae) * size / GB))

    # A guidance-distilled DiT runs one row per prompt; CFG runs two, and the image condition
    # of i2v / t2i2v or a conditioned AE's content frame (Reducio) adds a third, unless the
    # image scale is 1 (the no-image row then cancels out of the guided velocity: not run).
    conditioned = image_condition or t2i_dit is not None or needs_content(ae)
    branches = 3 if conditioned and sample.guidance_img != 1.0 else 2
    cfg_rows = (1 if dit.config.guidance_embed else branches) * batch_size
    dit_act = dit_inference_peak(dit, cfg_rows, latent, text_tokens, dtype) * ACTIVATION_MARGIN / GB
    p = dit.config.patch_size
    image_tokens = latent[1] * (latent[2] // p) * (latent[3] // p)
    state = run_state(recipe, dit, cfg_rows, batch_size, image_tokens, text_tokens, size)
    sp = recipe.launcher.sequence_parallel
    all_to_all_gb = 0.0
    if sp > 1:  # a rank holds its token share of the activations, plus one attention's exchange
        hidden = dit.config.hidden_size
        elements = exchange_elements(cfg_rows, image_tokens, text_tokens, hidden, sp)
        all_to_all_gb = elements * size / GB
        dit_act = dit_act * token_share(image_tokens, text_tokens, sp) + all_to_all_gb

    # Decoded video on the device: the decoder's output plus its fp32 copy before `.cpu()`.
    reference = reference_tiling(recipe, ae)
    options = decode_options(ae, sample, dtype, batch_size, reference)
    untiled_gb = options[0][1][0]
    if reference is not None and reference[0] < max(sample.height, sample.width):
        # A conditioned AE's reference tiles define its output (Reducio: upstream's
        # use_tiling=True), not only its memory: the untiled decode is another video.
        options = options[1:]
    # i2v and t2i2v encode each first frame held still for the whole clip, one image at a time,
    # in the decode's tiles (`t2i2v.condition_latent`); the expanded clip is copied to the device.
    clip_voxels = sample.frames * sample.height * sample.width
    encode_per_voxel = _coder_bytes_per_voxel(ae, dtype, decode=False) * ACTIVATION_MARGIN

    weights = {c.name: c.weight_gb for c in components}
    text_gb = sum(v for k, v in weights.items() if k.startswith("text:"))
    t2i_gb = sum(v for k, v in weights.items() if k.startswith("t2i:"))

    def streamed(model: nn.Module) -> float:
        """GB on the device while blocks stream: all but the blocks, plus two blocks in flight."""
        rest = param_count(model) - block_params(model)
        return (rest + 2 * largest_block_params(model)) * size / GB

    dit_streamed = streamed(dit)
    t2i_streamed = streamed(t2i_dit) + weights["t2i:ae"] if t2i_dit is not None else 0.0
    budget = None if gpu_memory_gb is None else gpu_memory_gb - RESERVED_GB

    def phases(offload: str, coder: tuple[float, int]) -> dict[str, float]:
        decode_gb, voxels = coder
        encode_gb = (encode_per_voxel * voxels + clip_voxels * 3 * size) / GB
        if offload == "none":
            resident = sum(weights.values())
            out = {"text": resident, "dit": resident + dit_act + state["sampling"]}
            if t2i_dit is not None:
                out["t2i"] = resident + t2i_act
            if image_condition or t2i_dit is not None:
                out["encode"] = resident + encode_gb
            return out | {"decode": resident + decode_gb}
        out = {"text": text_gb}
        if image_condition:  # `--image`: the video AE alone encodes it before sampling
            out["encode"] = weights["ae"] + encode_gb
        if t2i_dit is not None:  # the image models stay on the device while the AE encodes
            image_models = t2i_streamed if offload == "blocks" else t2i_gb
            out["t2i"] = image_models + weights["ae"] + t2i_act
            out["encode"] = image_models + weights["ae"] + encode_gb
        dit_weights = dit_streamed if offload == "blocks" else weights["dit"]
        out["dit"] = dit_weights + dit_act + state["sampling"]
        out["decode"] = weights["ae"] + decode_gb
        return out

    if not recipe.ae.tiling and budget is None:
        options = options[:1]
    # Moving whole models on and off the device costs a few seconds per prompt, decoding
    # overlapping tiles costs a fraction of every decode, streaming blocks costs a transfer of
    # the DiT per denoiser call: least decode work wins between `none` and `model`, and
    # `blocks` is the last resort. A quantized DiT or a compiled AE cannot move, and every
    # offload mode moves both (`Placement.resident`): every model stays resident.
    # Reference tiles (`reference_tiling`) come before any other tile, whatever their work, and
    # even with `blocks`: other tiles decode another video, the fallback when nothing else fits.
    quantized = sample.quantize != "none"
    pinned = [  # (what keeps the models resident, how to let the plan offload)
        (why, undo)
        for why, undo, on in (
            (f"[sample] quantize = '{sample.quantize}'", "set quantize to 'none'", quantized),
            (
                "[sample] compile_ae (the decoder's weights frozen into its compiled graph)",
                "drop --compile-ae",
                sample.compile_ae,
            ),
        )
        if on
    ]
    mode_tiers = ((OFFLOAD_MODES[0],),) if pinned else (OFFLOAD_MODES[:2], OFFLOAD_MODES[2:])
    option_tiers = (options,) if reference is None else (options[:1], options[1:])
    chosen = None
    for tier, modes in itertools.product(option_tiers, mode_tiers):
        fitting = [
            (work, OFFLOAD_MODES.index(offload), offload, tiling, coder)
            for offload in modes
            for tiling, coder, work in tier
            if budget is None or max(phases(offload, coder).values()) <= budget
        ]
        if fitting:
            work, _, offload, tiling, coder = min(fitting, key=lambda f: f[:2])
            chosen = offload, tiling, coder, work, phases(offload, coder)
            break
    least = min(options, key=lambda o: o[1])
    last = "none" if pinned else "blocks"
    smallest = max(phases(last, least[1]).values()) + RESERVED_GB
    fits = chosen is not None
    if chosen is None:
        chosen = (last, *least, phases(last, least[1]))
        notes.append(
            _pinned_refusal(pinned, smallest, gpu_memory_gb)
            if pinned
            else refusal(recipe, state, smallest, gpu_memory_gb, batch_size)
        )
    offload, tiling, (decode_gb, _), work, ph = chosen
    if reference is not None and tiling is not None and tiling["spatial_tile"] != reference[0]:
        notes.append(
            f"[ae] spatial_tile = {reference[0]} does not fit: the decode runs in "
            f"{tiling['spatial_tile']} px tiles, a different video from the reference tiling's"
        )
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
        cache_state_gb=state["cache"],
        sparse_residual_gb=state["sparse"],
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
        sequence_parallel=sp,
        all_to_all_gb=all_to_all_gb,
        quantize=sample.quantize,
        link_gb_s=link_gb_s,
        streamed_gb=block_params(dit) * size / GB if offload == "blocks" else 0.0,
    )


def _pinned_refusal(pinned: list[tuple[str, str]], smallest_gb: float, gpu_memory_gb: float) -> str:
    """The note of a plan that keeps every model resident and does not fit; `pinned`: (key,
    how to undo it) of each setting that forbids offload (a quantized DiT, a compiled AE)."""
    one = len(pinned) == 1
    return (
        f"{' and '.join(why for why, _ in pinned)} {'keeps' if one else 'keep'} every model "
        f"resident and {'does' if one else 'do'} not fit in {gpu_memory_gb:g} GB (needs "
        f"{smallest_gb:.1f} GB); {' and '.join(undo for _, undo in pinned)} to let the plan "
        "offload"
    )


def _t2i_stage(recipe: Recipe, dtype: torch.dtype, text_tokens: int, batch: int):
    """(components, activation GB, its DiT) of the t2i2v image stage; ([], 0, None) when off.

    A guidance-distilled image DiT (Flux) runs one row per prompt of the batch, a plain one text
    CFG's two, at about `resolution`² pixels and `[t2i] frames` frames; its AE decodes the
    batch's clips at once.
    """
    t2i = getattr(recipe, "t2i", None)
    if t2i is None or not t2i.enabled:
        return [], 0.0, None
    from vidcli.models import build_autoencoder
    from vidcli.models.mmdit import build_dit

    size = dtype_size(dtype)
    dit = build_dit(t2i.preset, device="meta", **t2i.overrides).to(dtype)
    ae = build_autoencoder(t2i.ae_preset, device="meta", **t2i.ae_overrides).eval().to(dtype)
    _, t_lat, h_lat, w_lat = ae.latent_shape(t2i.frames, t2i.resolution, t2i.resolution)
    latent = (dit.config.in_channels // dit.config.patch_size**2, t_lat, h_lat, w_lat)
    rows = batch * (1 if getattr(dit.config, "guidance_embed", True) else 2)
    act = dit_inference_peak(dit, rows, latent, text_tokens, dtype)
    z = torch.empty(batch, ae.latent_channels, t_lat, h_lat, w_lat, device="meta", dtype=dtype)
    act = max(act, measure_peak(lambda: ae.decode(z)))
    components = [
        ComponentMemory(f"t2i:{name}", param_count(m), param_count(m) * size / GB)
        for name, m in (("dit", dit), ("ae", ae))
    ]
    return components, act * ACTIVATION_MARGIN / GB, dit


def _coder_bytes_per_voxel(ae: nn.Module, dtype: torch.dtype, decode: bool) -> float:
    """Decoder (or encoder) activation peak per video voxel (frames x pixels, colours / 3).

    Measured on one reference tile on `meta`: the AE is fully convolutional, so its peak grows
    linearly with the tile volume (checked in tests/test_memory_plan.py).
    """
    # A conditioned AE (Reducio) takes one clip length only.
    t_lat, s_lat = (ae.frames // ae.time_compression if needs_content(ae) else 8), 8
    frames = ae.decoded_frames(t_lat)
    sc = ae.spatial_compression
    if decode:
        z = torch.empty(1, ae.latent_channels, t_lat, s_lat, s_lat, device="meta", dtype=dtype)
        peak = measure_peak(lambda: ae._decode_raw(z))
    else:
        ae.tiling = None  # this meta copy only: the reference tile runs untiled
        x = torch.empty(1, 3, frames, s_lat * sc, s_lat * sc, device="meta", dtype=dtype)
        peak = measure_peak(lambda: ae.encode(x))
    return peak / (frames * (s_lat * sc) ** 2)


def reference_tiling(recipe: Recipe, ae: nn.Module) -> tuple[int, float] | None:
    """(tile stride px, overlap) of `[ae]` when its tiles define the decoded video: a
    conditioned AE (Reducio) with `[ae] tiling` on; None otherwise (tiles only save memory)."""
    if not (needs_content(ae) and recipe.ae.tiling):
        return None
    if recipe.ae.spatial_tile % ae.spatial_compression:
        return None  # the AE refuses such tiles itself, naming the multiple
    return recipe.ae.spatial_tile, recipe.ae.tile_overlap


def decode_options(
    ae: nn.Module,
    sample: SampleSection,
    dtype: torch.dtype,
    batch: int = 1,
    reference: tuple[int, float] | None = None,
) -> list[tuple[dict[str, Any] | None, tuple[float, int], float]]:
    """[(tiling or None, (decode GB, video voxels per tile), work)] from untiled to the smallest
    tile, least work first, for `batch` videos of `sample`'s size decoded at once.

    work = voxels decoded / voxels of the video (overlapping tiles decode some voxels twice), so
    the plan tiles only as much as memory requires: big devices decode at untiled speed. The
    decoded video stays on the device with its fp32 copy made before `.cpu()`.
    reference: a conditioned AE's recipe tiles (`reference_tiling`): the tiles after untiled are
    that stride, then the smaller ones at its overlap.
    """
    from vidcli.models.dcae.tiling import tile_spans

    if needs_content(ae):
        return _content_decode_options(ae, sample, dtype, batch, reference)
    per_voxel = _coder_bytes_per_voxel(ae, dtype, decode=True) * ACTIVATION_MARGIN
    clip = sample.frames * sample.height * sample.width
    video_gb = batch * 3 * clip * (dtype_size(dtype) + 4) / GB
    found = [(None, (per_voxel * batch * clip / GB + video_gb, clip), 1.0)]
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
        found.append((tiling, (per_voxel * batch * voxels / GB + video_gb, voxels), work))
    return found


def _content_decode_options(
    ae: nn.Module,
    sample: SampleSection,
    dtype: torch.dtype,
    batch: int,
    reference: tuple[int, float] | None,
) -> list[tuple[dict[str, Any] | None, tuple[float, int], float]]:
    """`decode_options` of an AE that decodes from a content frame (Reducio): untiled, then its
    reference tiles (spatial only, all frames in each: tiles of (1 + overlap)·S at stride S):
    every stride of `SPATIAL_TILES`, or with `reference` (S, overlap) S and the smaller ones.

    Measured on `meta` with the cross-attention as fused SDPA (`measure_peak`): the untiled
    decode whole, content encode included; a tiled one as one tile's decode, plus the content
    features of every tile (the pyramid grid is made before the first tile decodes) and the
    assembled video. That sum is within 2 % of measuring the whole tiled decode of 16 frames at
    1024² (reducio-ft4, 256 and 128 px tiles), which takes seconds per tile size.
    """
    frames, height, width = sample.frames, sample.height, sample.width
    sc, size = ae.spatial_compression, dtype_size(dtype)
    _, t_lat, h_lat, w_lat = ae.latent_shape(frames, height, width)
    clip = frames * height * width
    copy_gb = batch * 3 * clip * 4 / GB  # the decoded video's fp32 copy before `.cpu()`
    ae.tiling = None  # this meta copy only: each measurement runs one tile untiled

    def peak(lat_h: int, lat_w: int) -> float:
        z = torch.empty(batch, ae.latent_channels, t_lat, lat_h, lat_w, device="meta", dtype=dtype)
        image = torch.empty(batch, 3, lat_h * sc, lat_w * sc, device="meta", dtype=dtype)
        return measure_peak(lambda: ae.decode(z, content=image)) * ACTIVATION_MARGIN

    probe = torch.empty(1, 3, sc, sc, device="meta", dtype=dtype)
    features = ae.encode_content(probe).features
    feature_bytes = sum(f.numel() * f.element_size() for f in features) / sc**2  # per pixel
    found = [(None, (peak(h_lat, w_lat) / GB + copy_gb, clip), 1.0)]
    overlap, strides, first = TILE_OVERLAP, SPATIAL_TILES, None
    if reference is not None:
        first, overlap = reference
        strides = (first, *(s for s in SPATIAL_TILES if s < first))
    for spatial in strides:
        stride = spatial // sc
        if spatial % sc or spatial >= max(height, width):
            continue  # one tile covers the whole video: that is the untiled decode
        if int(stride * overlap) < 1 and spatial != first:
            continue  # tiles this small share no latent row to blend: every edge would show
        tile = int(stride * (1 + overlap))
        lat_spans = [[(a, min(a + tile, n)) for a in range(0, n, stride)] for n in (h_lat, w_lat)]
        work = 1.0
        for axis, total in zip(lat_spans, (h_lat, w_lat), strict=True):
            work *= sum(b - a for a, b in axis) / total
        tile_h, tile_w = (max(b - a for a, b in axis) for axis in lat_spans)
        tiled_px = math.prod(
            sum(min(a + int(spatial * (1 + overlap)), n) - a for a in range(0, n, spatial))
            for n in (height, width)
        )
        grid = feature_bytes * batch * tiled_px * ACTIVATION_MARGIN
        video = batch * 3 * clip * size
        tiling = {"spatial_tile": spatial, "temporal_tile": frames, "overlap": overlap}
        gb = (peak(tile_h, tile_w) + grid + video) / GB + copy_gb
        found.append((tiling, (gb, frames * tile_h * tile_w * sc * sc), work))
    # Tiles by work, the recipe's stride (`first`) before all others.
    tiles = sorted(found[1:], key=lambda o: (o[0]["spatial_tile"] != first, o[2], -o[1][1]))
    return found[:1] + tiles


def generate_plan(
    recipe: Recipe,
    device: str | None,
    dtype: str | None,
    gpu_memory_gb: float | None,
    batch_size: int = 1,
    image_condition: bool = False,
    link_gb_s: float = LINK_GB_S,
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
        link_gb_s=link_gb_s,
    )
