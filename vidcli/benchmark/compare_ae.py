"""`vidcli benchmark --compare-ae`: the same DiT trained and sampled on the latents of each
autoencoder (random weights, random inputs: speed does not depend on the values), with times,
memory, FLOPs and speedups against the first row, as a table, JSON rows or CSV.

On CPU each AE row runs in a fresh process so its peak RSS is its own, and the AE times come from a
small probe clip scaled by voxel count (DC-AE is convolutions plus linear attention: cost linear in
T*H*W).
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import json
import logging
import math
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vidcli.benchmark.options import DTYPES, SEED, WARMUP, Settings
from vidcli.errors import StageFailed, UsageError
from vidcli.timing import Timing, measure_matmul_peak, time_calls

log = logging.getLogger("vidcli")

DEFAULT_AES = ("dc-ae-f8t4c16:2", "dc-ae-f32t4c128:1")
PROBE_SIDE = 64
"""Probe clips are PROBE_SIDE px square (or the AE's spatial compression if larger)."""


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
    """Measurements of one AE; times in seconds per batch, medians over `repeat` calls."""

    ae: str
    patch: int
    latent_shape: list[int]
    """(C, T', H', W') of one video's latent."""
    tokens: int
    """Image tokens per sample: T' * (H'/patch) * (W'/patch)."""
    train_step_s: float
    """DiT forward + backward + AdamW step."""
    infer_step_s: float
    """One denoising step: the DiT on 3*batch rows (text, negative text, unconditioned)."""
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
    ae_timing_probe: str | None
    """Probe clip TxHxW whose times were scaled by voxel count; None when measured at full size."""
    train_spread: float
    infer_spread: float
    encode_spread: float
    decode_spread: float
    speedup_train: float = 1.0
    speedup_infer: float = 1.0
    speedup_video: float = 1.0
    psnr: float | None = None
    ssim: float | None = None


def parse_ae_spec(spec: str) -> AESpec:
    """'PRESET:PATCH' -> AESpec; UsageError naming the presets otherwise."""
    from vidcli.models.dcae import AE_PRESETS

    preset, sep, patch = spec.rpartition(":")
    if not sep or preset not in AE_PRESETS or not patch.isdigit() or int(patch) < 1:
        raise UsageError(
            f"--ae {spec!r}: expected PRESET:PATCH with PATCH a positive integer and PRESET one "
            f"of {', '.join(AE_PRESETS)}",
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
    from vidcli.models.dcae import build_autoencoder

    with torch.device("meta"):
        return build_autoencoder(preset)


def row_tokens(spec: AESpec, s: Settings) -> tuple[tuple[int, int, int, int], int]:
    """(latent (C, T', H', W'), image tokens per sample) of one row; ShapeError if invalid."""
    latent = _meta_autoencoder(spec.preset).latent_shape(s.frames, s.height, s.width)
    _, t, h, w = latent
    return latent, t * (h // spec.patch) * (w // spec.patch)


def compare_autoencoders(specs: list[AESpec], s: Settings) -> tuple[list[AERow], dict[str, Any]]:
    """Measure every row (CPU: each in a fresh process) and fill the speedups against row 0."""
    for spec in specs:
        row_tokens(spec, s)  # every shape error before the first long measurement
    peak = measure_matmul_peak(s.device, DTYPES[s.dtype])
    rows = []
    for i, spec in enumerate(specs):
        log.info("compare-ae %d/%d: %s", i + 1, len(specs), spec.label)
        if s.device == "cpu":
            # A fresh process per row: ru_maxrss never goes down, so a shared process would
            # report the largest row's peak for every later row.
            rows.append(_measure_row_in_subprocess(spec, s, peak))
        else:
            rows.append(measure_row(spec, s, peak))
    base = rows[0]
    for row in rows:
        row.speedup_train = base.train_step_s / row.train_step_s
        row.speedup_infer = base.infer_step_s / row.infer_step_s
        row.speedup_video = base.video_s / row.video_s
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
        "mfu_against": f"measured {s.dtype} matmul peak on this device",
        "ae_timing": (
            f"probe {', '.join(sorted(probe))}, scaled by voxels" if probe else "measured"
        ),
        "peak_mem": (
            "peak RSS of each row's own process after the DiT train steps"
            if s.device == "cpu"
            else "torch.cuda.max_memory_allocated over the DiT train steps"
        ),
    }
    return rows, env


def _measure_row_in_subprocess(spec: AESpec, s: Settings, matmul_peak: float) -> AERow:
    """`measure_row` in a new Python process; arguments and the row travel as JSON."""
    job = json.dumps([dataclasses.asdict(spec), dataclasses.asdict(s), matmul_peak])
    code = "from vidcli.benchmark.compare_ae import row_worker; row_worker()"
    # The worker's stderr is ours (its errors show); its stdout carries only the row.
    done = subprocess.run(
        [sys.executable, "-c", code], input=job, stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise StageFailed(
            f"compare-ae row {spec.label} failed in its worker process (exit {done.returncode})"
        )
    return AERow(**json.loads(done.stdout))


def row_worker() -> None:
    """Entry of the per-row process: JSON [spec, settings, matmul peak] on stdin, row on stdout."""
    spec, settings, peak = json.loads(sys.stdin.read())
    blocks = settings["dit_blocks"]
    settings["dit_blocks"] = tuple(blocks) if blocks else None
    row = measure_row(AESpec(**spec), Settings(**settings), peak)
    sys.stdout.write(json.dumps(dataclasses.asdict(row)))


def measure_row(spec: AESpec, s: Settings, matmul_peak: float) -> AERow:
    """DiT train/inference timings on this AE's latent size, then the AE's encode/decode."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(SEED)
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    latent, tokens = row_tokens(spec, s)
    dit, train, infer, peak_mem = _time_dit(spec, latent, s)
    flops = 3 * dit.forward_flops(tokens, s.text_tokens) * s.batch_size
    dit_params = sum(p.numel() for p in dit.parameters())
    del dit
    encode, decode, probe = _time_autoencoder(spec.preset, s, device, dtype)
    decode_s = decode.median * probe[2] if probe else decode.median
    return AERow(
        ae=spec.preset,
        patch=spec.patch,
        latent_shape=list(latent),
        tokens=tokens,
        train_step_s=train.median,
        infer_step_s=infer.median,
        video_s=s.steps * infer.median + decode_s,
        encode_s=encode.median * probe[1] if probe else encode.median,
        decode_s=decode_s,
        peak_mem_bytes=peak_mem,
        flops_per_step=flops,
        achieved_flops=flops / train.median,
        mfu=flops / train.median / matmul_peak,
        samples_per_s=s.batch_size / train.median,
        text_tokens=s.text_tokens,
        dit_params=dit_params,
        ae_timing_probe=probe[0] if probe else None,
        train_spread=train.spread,
        infer_spread=infer.spread,
        encode_spread=encode.spread,
        decode_spread=decode.spread,
    )


def _time_dit(
    spec: AESpec, latent: tuple[int, ...], s: Settings
) -> tuple[torch.nn.Module, Timing, Timing, int]:
    """(model, train-step timing, denoising-step timing, peak memory bytes) on random tokens."""
    from vidcli.models.mmdit import build_dit, make_image_ids

    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    c, t, h, w = latent
    blocks = {}
    if s.dit_blocks:
        blocks = dict(depth=s.dit_blocks[0], depth_single_blocks=s.dit_blocks[1])
    model = build_dit(
        s.dit,
        device=device,
        dtype=dtype,
        in_channels=c * spec.patch**2,
        patch_size=spec.patch,
        **blocks,
    )
    cfg, b = model.config, s.batch_size
    ids = make_image_ids(b, t, h // spec.patch, w // spec.patch, device=device)
    inputs = dict(
        img=torch.randn(b, ids.shape[1], cfg.in_channels, device=device, dtype=dtype),
        img_ids=ids,
        txt=torch.randn(b, s.text_tokens, cfg.context_in_dim, device=device, dtype=dtype),
        txt_ids=torch.zeros(b, s.text_tokens, 3, device=device),
        timesteps=torch.rand(b, device=device, dtype=dtype),
        y_vec=torch.randn(b, cfg.vec_in_dim, device=device, dtype=dtype),
        guidance=torch.full((b,), 4.0, device=device, dtype=dtype),
    )
    target = torch.randn_like(inputs["img"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step() -> None:
        F.mse_loss(model(**inputs).float(), target.float()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # The sampler's classifier-free guidance runs text, negative text and unconditioned rows
    # in one batch of 3B (flow.py), so one denoising step is one call on 3B rows.
    cfg_inputs = {k: torch.cat([v] * 3) for k, v in inputs.items()}

    @torch.no_grad()
    def infer_step() -> None:
        model(**cfg_inputs)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train = time_calls(train_step, device, s.repeat, WARMUP)
    if device.type == "cuda":
        peak_mem = torch.cuda.max_memory_allocated(device)
    else:
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT
    optimizer.state.clear()  # free the AdamW moments before the inference timings
    model.requires_grad_(False)
    infer = time_calls(infer_step, device, s.repeat, WARMUP)
    return model, train, infer, peak_mem


# ru_maxrss is in kilobytes on Linux, bytes on macOS.
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024


def probe_shape(ae) -> tuple[int, int, int]:
    """The smallest clip the AE round-trips in time (two latent frames), PROBE_SIDE px square."""
    frames = 2 * ae.time_compression if ae.is_video else 1
    side = max(PROBE_SIDE, ae.spatial_compression)
    return frames, side, side


def _time_autoencoder(preset: str, s: Settings, device: torch.device, dtype: torch.dtype):
    """(encode Timing, decode Timing, probe) where probe = (label, encode scale, decode scale)
    when the times were taken on a probe clip, else None."""
    from vidcli.models.dcae import TilingConfig, build_autoencoder

    ae = build_autoencoder(preset).to(device=device, dtype=dtype).eval()
    full = (s.frames, s.height, s.width)
    size, probe = full, None
    if s.ae_timing == "probe":
        small = probe_shape(ae)
        if math.prod(small) < math.prod(full):
            # Linear cost in voxels: encode scales with input voxels, decode with output voxels.
            encode_scale = math.prod(full) / math.prod(small)
            decode_scale = _decoded_voxels(ae, *full) / _decoded_voxels(ae, *small)
            size, probe = small, ("x".join(map(str, small)), encode_scale, decode_scale)
    elif device.type == "cuda":
        ae.tiling = TilingConfig()
    x = torch.rand(s.batch_size, ae.config.in_channels, *size, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        encode = time_calls(lambda: ae.encode(x), device, s.repeat, WARMUP)
        decode = time_calls(lambda: ae.decode(z), device, s.repeat, WARMUP)
    return encode, decode, probe


def _decoded_voxels(ae, frames: int, height: int, width: int) -> int:
    _, t, _, _ = ae.latent_shape(frames, height, width)
    return ae.decoded_frames(t) * height * width


CSV_FIELDS = [f.name for f in dataclasses.fields(AERow)]


def write_csv(rows: list[AERow], path: Path) -> Path:
    """One line per row, the AERow fields as columns (latent shape as CxTxHxW)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv_module.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            values = dataclasses.asdict(row)
            values["latent_shape"] = "x".join(map(str, row.latent_shape))
            writer.writerow(values)
    return path


def print_table(rows: list[AERow], env: dict[str, Any]) -> None:
    """The compare-ae rows as a rich table on stderr (stdout stays for results)."""
    from rich.console import Console
    from rich.table import Table

    from vidcli.console import quiet_enabled, stderr

    if quiet_enabled() or not rows:
        return
    table = Table(
        title=f"DiT {env['dit']} on each AE's latents, {env['frames']} frames "
        f"{env['resolution'][0]}x{env['resolution'][1]}, batch {env['batch_size']}, "
        f"{env['device_name']} {env['dtype']}",
        caption=f"median of {env['repeat']} after {WARMUP} warm-up; AE times: "
        f"{env['ae_timing']}; MFU against the measured matmul peak "
        f"{env['matmul_peak_flops'] / 1e12:.3g} TFLOP/s",
    )
    columns = ["AE:patch", "latent", "tokens", "train s", "samples/s", "step s", "video s"]
    columns += ["enc s", "dec s", "peak mem", "TFLOP/step", "MFU", "x train", "x step", "x video"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("AE:patch", "latent") else "right")
    for r in rows:
        table.add_row(
            f"{r.ae}:{r.patch}",
            "x".join(map(str, r.latent_shape)),
            str(r.tokens),
            f"{r.train_step_s:.3g}",
            f"{r.samples_per_s:.3g}",
            f"{r.infer_step_s:.3g}",
            f"{r.video_s:.4g}",
            f"{r.encode_s:.3g}",
            f"{r.decode_s:.3g}",
            f"{r.peak_mem_bytes / 2**30:.2f} GiB",
            f"{r.flops_per_step / 1e12:.3g}",
            f"{r.mfu:.1%}",
            f"{r.speedup_train:.2f}",
            f"{r.speedup_infer:.2f}",
            f"{r.speedup_video:.2f}",
        )
    if stderr.is_terminal:
        stderr.print(table)
    else:  # a file or pipe: wide enough for every column rather than rich's default 80
        Console(stderr=True, highlight=False, width=160).print(table)
