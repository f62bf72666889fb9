"""`vidcli benchmark --compare-ae`: the same DiT trained and sampled on the latents of each
autoencoder (random weights, random inputs: speed does not depend on the values), with times,
memory, FLOPs and speedups against the first row, as a table, JSON rows or CSV.

Each row lives in a worker process of its own (`worker.RowProcess`: its peak memory is its own),
and the rows are timed interleaved, A B A B ..., one call at a time: a speedup is the median over
rounds of baseline time / row time, so a neighbouring job slows both sides of each ratio alike.
The DiT train step runs in train-dit's regime: fp32 master weights and AdamW state, the forward
under `--dtype` autocast (train-dit's `[launcher] precision`); the denoising step, as generate,
casts the weights to `--dtype`. Each row's DiT step checkpoints its blocks only when the memory
plan says it must (`row_memory`;
the table says when rows differ), and on CUDA rows that do not fit the device together take turns
on it: the idle rows' DiT and AdamW state wait in CPU memory, moved outside the timed calls.
On CPU the AE times come from a small probe clip scaled by voxel count (DC-AE is convolutions
plus linear attention: cost linear in T*H*W); every output marks those numbers as extrapolated.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import resource
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from vidcli import devices
from vidcli.benchmark import row_memory
from vidcli.benchmark.options import DTYPES, SEED, WARMUP, Settings
from vidcli.benchmark.worker import RowProcess
from vidcli.errors import ShapeError, UsageError
from vidcli.models.content import content_frames, needs_content
from vidcli.models.content import decode as content_decode
from vidcli.timing import Timing, measure_matmul_peak, median_ratio, time_interleaved, time_once

log = logging.getLogger("vidcli")

DEFAULT_AES = ("hunyuan-video-vae:2", "dc-ae-f8t4c16:2", "dc-ae-f32t4c128:1")
"""The rows of a plain `--compare-ae`: the baseline is the AE Open-Sora 2.0's 11B model really
uses (HunyuanVideo VAE, 4x8x8, patch 2), then the same-family 4x8x8 DC-AE stand-in, then the
Video DC-AE."""
PROBE_SIDE = 64
"""Probe clips are PROBE_SIDE px square (or the AE's spatial compression if larger)."""
CFG_ROWS = 2
"""DiT rows per video in one denoising step: flow.sample_i2v's text-to-video CFG batch
[prompt, negative prompt]."""
RGB = 3
"""Input channels of every AE: RGB video."""
EXTRAPOLATED_FIELDS = ("encode_s", "decode_s", "video_s", "speedup_video")
"""Row fields that hold probe times scaled by voxel count (or depend on them) on a probe run."""


@dataclass(frozen=True)
class AESpec:
    """One compare-ae row: an AE preset and the DiT patch size on its latents."""

    preset: str
    patch: int

    @property
    def label(self) -> str:
        return f"{self.preset}:{self.patch}"


@dataclass
class AERow:
    """Measurements of one AE; times in seconds per batch, medians over `repeat` rounds."""

    ae: str
    patch: int
    latent_shape: list[int]
    """(C, T', H', W') of one video's latent."""
    tokens: int
    """Image tokens per sample: T' * (H'/patch) * (W'/patch)."""
    train_step_s: float
    """DiT forward + backward + AdamW step."""
    infer_step_s: float
    """One denoising step: the DiT on CFG_ROWS * batch rows (prompt, negative prompt)."""
    video_s: float
    """steps * infer_step_s + decode_s."""
    encode_s: float
    decode_s: float
    peak_mem_bytes: int
    """CUDA: max allocated during the train steps; CPU: peak RSS of the row's process after them."""
    flops_per_step: float
    """Model FLOPs of one training step: 3 * forward FLOPs * batch."""
    achieved_flops: float
    """flops_per_step / train_step_s."""
    mfu: float
    """achieved_flops / the measured matmul peak (env.matmul_peak_flops)."""
    samples_per_s: float
    text_tokens: int
    dit_params: int
    grad_checkpointing: bool
    """Whether the DiT train step checkpointed every block (recomputing its activations)."""
    ae_timing_probe: str | None
    """Probe clip TxHxW whose times were scaled by voxel count; None when measured at full size."""
    extrapolated: list[str]
    """The fields of this row scaled from the probe clip rather than measured (empty if none)."""
    train_rounds: list[float]
    """Seconds of each interleaved round (the speedups are medians of per-round ratios)."""
    infer_rounds: list[float]
    encode_rounds: list[float]
    """Per round; scaled like encode_s on a probe run."""
    decode_rounds: list[float]
    train_spread: float
    infer_spread: float
    encode_spread: float
    decode_spread: float
    speedup_train: float = 1.0
    """Median over rounds of baseline train time / this row's (row 0 is the baseline)."""
    speedup_infer: float = 1.0
    speedup_video: float = 1.0
    psnr: float | None = None
    ssim: float | None = None
    content_s: float | None = None
    """Encoding the content frames a conditioned AE (Reducio) decodes from, per batch: part of
    decode_s, shown apart; None for AEs without one."""
    attention_share: float = 0.0
    """Attention's share of the measured DiT's forward FLOPs at this row's tokens."""
    attention_share_11b: float = 0.0
    """The same share for Open-Sora 2.0's 11B MMDiT at this row's tokens: what the row's ratios
    should be read against. A --dit-blocks cut of the 11B layout keeps it (the share depends on
    the width and the tokens, and its double and single blocks weigh alike); a narrower DiT
    (mmdit-s) has a larger one."""
    compile_s: float | None = None
    """Seconds compiling the row's DiT (train and denoising graphs, in the warm-up round);
    None without --compile."""

    def video_rounds(self, steps: int) -> list[float]:
        """steps * infer + decode of each round."""
        return [steps * i + d for i, d in zip(self.infer_rounds, self.decode_rounds, strict=True)]


def parse_ae_spec(spec: str) -> AESpec:
    """'PRESET:PATCH' -> AESpec; UsageError naming the presets otherwise."""
    from vidcli.models.autoencoders import all_presets

    presets = all_presets()
    preset, sep, patch = spec.rpartition(":")
    if not sep or preset not in presets or not patch.isdigit() or int(patch) < 1:
        raise UsageError(
            f"--ae {spec!r}: expected PRESET:PATCH with PATCH a positive integer and PRESET one "
            f"of {', '.join(presets)}",
            hint="vidcli benchmark --compare-ae --ae dc-ae-f8t4c16:2 --ae dc-ae-f32t4c128:1",
        )
    return AESpec(preset, int(patch))


def pixel_alignment(specs: list[AESpec]) -> int:
    """The multiple of pixels every row needs in H and W: its AE's compression x its patch."""
    return max(
        (_meta_autoencoder(s.preset).spatial_compression * s.patch for s in specs), default=1
    )


def _meta_autoencoder(preset: str):
    """The AE without weights in memory: enough for shapes and compression factors."""
    from vidcli.models.autoencoders import build_autoencoder

    return build_autoencoder(preset, device="meta")


def _needs_content(spec: AESpec) -> bool:
    return needs_content(_meta_autoencoder(spec.preset))


def row_frames(ae, frames: int) -> int:
    """The clip length a row measures: `frames`, or the next count the AE takes (a causal AE
    needs T = 4k + 1: Open-Sora pairs 129 HunyuanVideo frames with 128 Video DC-AE frames)."""
    side = ae.spatial_compression
    for candidate in range(frames, frames + 2 * ae.time_compression):
        try:
            ae.check_input_shape(candidate, side, side)
        except ShapeError:
            continue
        return candidate
    return frames


def attention_share(config, image_tokens: int, text_tokens: int) -> float:
    """Attention's share of one forward's model FLOPs: the 4·L·D·T² term of `dit_flops`."""
    from vidcli.models.mmdit import dit_flops

    tokens = image_tokens + text_tokens
    blocks = config.depth + config.depth_single_blocks
    return (
        4 * blocks * config.hidden_size * tokens**2 / dit_flops(config, image_tokens, text_tokens)
    )


def row_dit_config(spec: AESpec, s: Settings, preset: str | None = None):
    """The config of the DiT a row measures (`preset` instead of --dit, uncut, when given)."""
    from vidcli.models.mmdit import resolve_config

    (c, _, _, _), _ = row_tokens(spec, s)
    depth = {}
    if s.dit_blocks and preset is None:
        depth = dict(depth=s.dit_blocks[0], depth_single_blocks=s.dit_blocks[1])
    return resolve_config(
        preset or s.dit, in_channels=c * spec.patch**2, patch_size=spec.patch, **depth
    )


def row_tokens(spec: AESpec, s: Settings) -> tuple[tuple[int, int, int, int], int]:
    """(latent (C, T', H', W'), image tokens per sample) of one row; ShapeError if invalid."""
    ae = _meta_autoencoder(spec.preset)
    latent = ae.latent_shape(row_frames(ae, s.frames), s.height, s.width)
    _, t, h, w = latent
    return latent, t * (h // spec.patch) * (w // spec.patch)


# ------------------------------------------------------------------------------- measurement


def compare_autoencoders(specs: list[AESpec], s: Settings) -> tuple[list[AERow], dict[str, Any]]:
    """Measure every row interleaved, each in its own worker, and fill the speedups vs row 0."""
    for spec in specs:
        row_tokens(spec, s)  # every shape error before the first long measurement
    peak = measure_matmul_peak(s.device, DTYPES[s.dtype])
    if s.device_type == "cuda":
        torch.cuda.empty_cache()  # the matmul's memory is the rows' now
    layout = row_memory.plan_layout([(spec.label, row_tokens(spec, s)[0]) for spec in specs], s)
    log.info("compare-ae: %s, timed interleaved", ", ".join(spec.label for spec in specs))
    with ExitStack() as stack:
        workers = [
            stack.enter_context(
                RowProcess(
                    "vidcli.benchmark.compare_ae:RowBench",
                    f"compare-ae row {spec.label}",
                    spec=dataclasses.asdict(spec),
                    settings=dataclasses.asdict(s),
                    grad_checkpointing=ckpt,
                    swap=layout.swap,
                )
            )
            for spec, ckpt in zip(specs, layout.grad_checkpointing, strict=True)
        ]

        def interleaved(method: str) -> list[Timing]:
            return time_interleaved([partial(w.call, method) for w in workers], s.repeat, WARMUP)

        train = interleaved("train")
        facts = [w.call("finish_train") for w in workers]
        infer = interleaved("infer")
        compiled = [w.call("compile_time") for w in workers]
        probes = [w.call("start_autoencoder") for w in workers]
        encode = interleaved("encode")
        decode = interleaved("decode")
        content = interleaved("content") if any(map(_needs_content, specs)) else None
    rows = [
        _row(spec, s, peak, *measured)
        for spec, *measured in zip(specs, facts, probes, train, infer, encode, decode, strict=True)
    ]
    for i, row in enumerate(rows):
        row.compile_s = compiled[i]
        if content is not None and _needs_content(specs[i]):
            row.content_s = content[i].median * probes[i]["content_scale"]
            if row.extrapolated:  # scaled from the probe's content frame like the decode
                row.extrapolated.append("content_s")
    base = rows[0]
    base_train, base_infer = Timing(tuple(base.train_rounds)), Timing(tuple(base.infer_rounds))
    base_video = Timing(tuple(base.video_rounds(s.steps)))
    for row in rows:
        row.speedup_train = median_ratio(base_train, Timing(tuple(row.train_rounds)))
        row.speedup_infer = median_ratio(base_infer, Timing(tuple(row.infer_rounds)))
        row.speedup_video = median_ratio(base_video, Timing(tuple(row.video_rounds(s.steps))))
    probe = {r.ae_timing_probe for r in rows} - {None}
    env = {
        "resolution": [s.height, s.width],
        "frames": s.frames,
        "batch_size": s.batch_size,
        "steps": s.steps,
        "text_tokens": s.text_tokens,
        "dit": s.dit,
        "dit_blocks": list(s.dit_blocks) if s.dit_blocks else None,
        "matmul_peak_flops": peak,
        "grad_checkpointing": s.grad_checkpointing,
        "compile": s.compile,
        "row_placement": (
            "swap: only the timed row's DiT and AdamW state are on the device, the others wait "
            "in CPU memory (moved outside the timed call)"
            if layout.swap
            else "resident: every row's models stay in memory"
        ),
        "memory_gb": layout.memory_gb,
        "estimated_train_peak_gb": list(layout.peaks_gb),
        "mfu_against": f"measured {s.dtype} matmul peak on this device",
        "train_precision": f"fp32 master weights and AdamW state, {s.dtype} autocast (train-dit's "
        f"[launcher] precision = {s.dtype}); denoising step with {s.dtype} weights",
        "ae_timing": (
            f"extrapolated: probe {', '.join(sorted(probe))}, scaled by voxels"
            if probe
            else "measured"
        ),
        "interleaved": "rows timed A B A B ..., one call at a time; speedups are medians of "
        "per-round ratios",
        "peak_mem": (
            "peak RSS of each row's own process after the DiT train steps"
            if s.device_type == "cpu"
            else "torch.cuda.max_memory_allocated of each row's own process over its train steps"
        ),
    }
    return rows, env


def _row(
    spec: AESpec,
    s: Settings,
    matmul_peak: float,
    facts: dict[str, Any],
    probe: dict[str, Any],
    train: Timing,
    infer: Timing,
    encode: Timing,
    decode: Timing,
) -> AERow:
    latent, tokens = row_tokens(spec, s)
    measured, real = row_dit_config(spec, s), row_dit_config(spec, s, "opensora-v2-11b")
    encode_rounds = [t * probe["encode_scale"] for t in encode.seconds]
    decode_rounds = [t * probe["decode_scale"] for t in decode.seconds]
    decode_s = decode.median * probe["decode_scale"]
    flops = facts["flops_per_step"]
    return AERow(
        ae=spec.preset,
        patch=spec.patch,
        latent_shape=list(latent),
        tokens=tokens,
        train_step_s=train.median,
        infer_step_s=infer.median,
        video_s=s.steps * infer.median + decode_s,
        encode_s=encode.median * probe["encode_scale"],
        decode_s=decode_s,
        peak_mem_bytes=facts["peak_mem_bytes"],
        flops_per_step=flops,
        achieved_flops=flops / train.median,
        mfu=flops / train.median / matmul_peak,
        samples_per_s=s.batch_size / train.median,
        text_tokens=s.text_tokens,
        dit_params=facts["dit_params"],
        grad_checkpointing=facts["grad_checkpointing"],
        ae_timing_probe=probe["label"],
        extrapolated=list(EXTRAPOLATED_FIELDS) if probe["label"] else [],
        train_rounds=list(train.seconds),
        infer_rounds=list(infer.seconds),
        encode_rounds=encode_rounds,
        decode_rounds=decode_rounds,
        train_spread=train.spread,
        infer_spread=infer.spread,
        encode_spread=encode.spread,
        decode_spread=decode.spread,
        attention_share=attention_share(measured, tokens, s.text_tokens),
        attention_share_11b=attention_share(real, tokens, s.text_tokens),
    )


class RowBench:
    """One row's models and the calls timed on them, built inside the row's worker process.

    Phases, each timed interleaved with the other rows: `train` (DiT step), then
    `finish_train`, `infer` (denoising step), then `start_autoencoder`, `encode`, `decode`.
    Each timing method runs one call and returns its seconds.

    `train` keeps fp32 master weights and runs the forward under `dtype` autocast, as train-dit
    does; `finish_train` casts the DiT to `dtype` for `infer`, as generate samples.

    grad_checkpointing: checkpoint every DiT block in `train` (with settings 'auto', a step that
    runs out of CUDA memory also turns it on and is run again). swap (CUDA): the DiT and its
    AdamW state live in CPU memory except during this row's own train/infer calls, so the rows
    timed in turn never hold the device together.
    """

    def __init__(
        self,
        spec: dict[str, Any],
        settings: dict[str, Any],
        grad_checkpointing: bool = False,
        swap: bool = False,
    ):
        from vidcli.compile import compile_dit
        from vidcli.models.mmdit import build_dit, make_image_ids

        blocks = settings["dit_blocks"]
        s = Settings(**{**settings, "dit_blocks": tuple(blocks) if blocks else None})
        self.spec, self.s = AESpec(**spec), s
        torch.set_num_threads(s.threads)
        torch.manual_seed(SEED)
        self.device, self.dtype = torch.device(s.device), DTYPES[s.dtype]
        device = self.device
        (c, t, h, w), self.tokens = row_tokens(self.spec, s)
        p = self.spec.patch
        depth = {}
        if s.dit_blocks:
            depth = dict(depth=s.dit_blocks[0], depth_single_blocks=s.dit_blocks[1])
        # fp32 master weights and inputs, as train-dit's batches: autocast lowers the matmuls.
        model = build_dit(
            s.dit, device=device, dtype=torch.float32, in_channels=c * p**2, patch_size=p, **depth
        )
        cfg, b = model.config, s.batch_size
        ids = make_image_ids(b, t, h // p, w // p, device=device)
        self.inputs = dict(
            img=torch.randn(b, ids.shape[1], cfg.in_channels, device=device),
            img_ids=ids,
            txt=torch.randn(b, s.text_tokens, cfg.context_in_dim, device=device),
            txt_ids=torch.zeros(b, s.text_tokens, 3, device=device),
            timesteps=torch.rand(b, device=device),
            y_vec=torch.randn(b, cfg.vec_in_dim, device=device),
            guidance=torch.full((b,), 4.0, device=device),
        )
        self.target = torch.randn_like(self.inputs["img"])
        self.model = model
        self.optimizer: torch.optim.Optimizer | None = torch.optim.AdamW(
            model.parameters(), lr=1e-5
        )
        self.checkpointing = grad_checkpointing
        model.set_gradient_checkpointing(grad_checkpointing)
        # The warm-up round compiles: the train graphs, then (weights cast) the denoising ones.
        self.compile_stats = compile_dit(model, s.compile)
        self.swap = swap and device.type == "cuda"
        if self.swap:
            self._park()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def _park(self) -> None:
        """DiT and AdamW state to CPU memory, and this process's cached device memory freed."""
        self.model.to("cpu")
        if self.optimizer is not None:
            row_memory.move_optimizer(self.optimizer, torch.device("cpu"))
        torch.cuda.empty_cache()

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        """With swap: the model (and optimizer) on the device for one call, outside its timing."""
        if self.swap:
            self.model.to(self.device)
            if self.optimizer is not None:
                row_memory.move_optimizer(self.optimizer, self.device)
        try:
            yield
        finally:
            if self.swap:
                self._park()

    def _step(self) -> None:
        with devices.autocast(self.device, self.dtype):
            out = self.model(**self.inputs)
        F.mse_loss(out.float(), self.target.float()).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self) -> float:
        with self._on_device():
            try:
                return time_once(self._step, self.device)
            except torch.cuda.OutOfMemoryError:
                if self.s.grad_checkpointing != "auto" or self.checkpointing:
                    raise
            # Outside the except block, so the failed step's tensors are released first.
            self.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            log.warning(
                "compare-ae row %s: out of memory without checkpointing (the memory plan "
                "underestimated it); checkpointing every block from now on",
                self.spec.label,
            )
            self.checkpointing = True
            self.model.set_gradient_checkpointing(True)
            return time_once(self._step, self.device)

    def finish_train(self) -> dict[str, Any]:
        """Peak memory of the train steps, FLOPs and size; frees the optimizer for inference."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
        self.optimizer = None  # free the AdamW moments before the inference timings
        self.model.requires_grad_(False).to(self.dtype)  # generate samples with --dtype weights
        # The sampler runs CFG_ROWS rows per video in one batch (flow.sample_i2v); the position
        # ids stay fp32 as the model makes them.
        self.cfg_inputs = {
            k: torch.cat([v] * CFG_ROWS).to(torch.float32 if k.endswith("_ids") else self.dtype)
            for k, v in self.inputs.items()
        }
        flops = 3 * self.model.forward_flops(self.tokens, self.s.text_tokens) * self.s.batch_size
        return {
            "peak_mem_bytes": peak,
            "flops_per_step": flops,
            "dit_params": sum(p.numel() for p in self.model.parameters()),
            "grad_checkpointing": self.checkpointing,
        }

    @torch.no_grad()
    def infer(self) -> float:
        with self._on_device():
            return time_once(lambda: self.model(**self.cfg_inputs), self.device)

    def compile_time(self) -> float | None:
        """Seconds this row's DiT spent compiling (None: not compiled)."""
        return None if self.s.compile == "off" else self.compile_stats().compile_s

    def start_autoencoder(self) -> dict[str, Any]:
        """Drop the DiT, build the AE and its input; {label, encode_scale, decode_scale} of the
        probe clip (label None and scales 1 when timed at full size)."""
        from vidcli.models.autoencoders import build_autoencoder
        from vidcli.models.dcae import TilingConfig

        del self.model, self.inputs, self.cfg_inputs, self.target
        gc.collect()
        s = self.s
        ae = build_autoencoder(self.spec.preset).to(device=self.device, dtype=self.dtype).eval()
        full = (row_frames(ae, s.frames), s.height, s.width)
        size = full
        probe = {"label": None, "encode_scale": 1.0, "decode_scale": 1.0, "content_scale": 1.0}
        if s.ae_timing == "probe":
            small = probe_shape(ae)
            if math.prod(small) < math.prod(full):
                # Linear cost in voxels: encode scales with input voxels, decode with output ones,
                # a content frame's encode with its pixels.
                size = small
                probe = {
                    "label": "x".join(map(str, small)),
                    "encode_scale": math.prod(full) / math.prod(small),
                    "decode_scale": _decoded_voxels(ae, *full) / _decoded_voxels(ae, *small),
                    "content_scale": math.prod(full[1:]) / math.prod(small[1:]),
                }
        elif self.device.type == "cuda":
            ae.tiling = TilingConfig()
        shape = (s.batch_size, RGB, *size)
        self.x = torch.rand(shape, device=self.device, dtype=self.dtype) * 2 - 1
        self.ae = ae
        self.content_images = content_frames(ae, self.x)  # None unless the AE decodes from one
        with torch.no_grad():
            self.z = ae.encode(self.x)
        return probe

    @torch.no_grad()
    def encode(self) -> float:
        return time_once(lambda: self.ae.encode(self.x), self.device)

    @torch.no_grad()
    def decode(self) -> float:
        """The decode, a conditioned AE's content-frame encode included (generate pays both)."""
        return time_once(lambda: content_decode(self.ae, self.z, self.content_images), self.device)

    @torch.no_grad()
    def content(self) -> float:
        """The content-frame encode alone (0 for AEs without a content frame)."""
        if self.content_images is None:
            return 0.0
        return time_once(lambda: self.ae.encode_content(self.content_images), self.device)


# ru_maxrss is in kilobytes on Linux, bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def probe_shape(ae) -> tuple[int, int, int]:
    """The smallest clip the AE round-trips in time (two latent frames; a conditioned AE's one
    clip length), PROBE_SIDE px square."""
    frames = ae.frames if needs_content(ae) else ae.decoded_frames(2) if ae.is_video else 1
    side = max(PROBE_SIDE, ae.spatial_compression)
    return frames, side, side


def _decoded_voxels(ae, frames: int, height: int, width: int) -> int:
    _, t, _, _ = ae.latent_shape(frames, height, width)
    return ae.decoded_frames(t) * height * width
