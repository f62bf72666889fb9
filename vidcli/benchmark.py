"""`vidcli benchmark`: measured, side-by-side comparisons.

`--compare-ae` trains and samples the same DiT on the latents of each autoencoder (random weights,
random inputs: speed does not depend on the values) and reports times, memory, FLOPs and speedups
against the first row. `--quality` adds reconstruction PSNR/SSIM of trained AEs on real clips;
`--attention` and `--kernels` time the attention backends and each kernel against its reference.

Method: one warm-up call, then `repeat` calls each timed alone between device synchronisations;
the median is reported with the spread (max - min) / median. Seeds are fixed. On CPU each AE row
runs in a fresh process so its peak RSS is its own, and the AE times come from a small probe clip
scaled by voxel count (DC-AE is convolutions plus linear attention: cost linear in T*H*W).
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import json
import logging
import math
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from vidcli import metrics
from vidcli.errors import ShapeError, StageFailed, UsageError
from vidcli.timing import Timing, measure_matmul_peak, time_calls

log = logging.getLogger("vidcli")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_AES = ("dc-ae-f8t4c16:2", "dc-ae-f32t4c128:1")
AE_TIMINGS = ("auto", "probe", "full")
SEED = 0
WARMUP = 1
ASPECT = 16 / 9
PROBE_SIDE = 64
"""Probe clips are PROBE_SIDE px square (or the AE's spatial compression if larger)."""


@dataclass(frozen=True)
class DeviceDefaults:
    """Benchmark sizes used when the command line leaves them out."""

    resolution: int
    """Video height in pixels; the width is the nearest valid 16:9 width."""
    frames: int
    """Frames per video."""
    dit: str
    """DiT preset of every row."""
    dit_blocks: str | None
    """'DOUBLE,SINGLE' block counts replacing the preset's (None: the preset's own)."""
    text_tokens: int
    """Text tokens per sample fed to the DiT."""


DEFAULTS = {
    # Fits in about two minutes on a 2-core CPU: 1792 vs 448 image tokens.
    "cpu": DeviceDefaults(256, 16, "mmdit-s", None, 32),
    # Open-Sora 2.0's 768px 16:9 bucket (576x1024, 128 frames, 512 text tokens) on the full-width
    # 11B layout cut to 2 double + 4 single blocks, as in gpu-anchors.md: AdamW state of all 57
    # blocks would not fit one GPU.
    "cuda": DeviceDefaults(576, 128, "opensora-v2-11b", "2,4", 512),
}


@dataclass
class BenchmarkOptions:
    """What `vidcli benchmark` measures; None sizes take the device's `DEFAULTS`."""

    compare_ae: bool = False
    """DiT train/inference/generation speed on the latents of each AE in `ae`."""
    ae: list[str] = field(default_factory=list)
    """PRESET:PATCH rows (first = baseline); empty: DEFAULT_AES."""
    dit: str | None = None
    """DiT preset of every row."""
    resolution: int | None = None
    """Video height in pixels (16:9 width)."""
    frames: int | None = None
    """Frames per video."""
    batch_size: int = 1
    """Videos per DiT step (and per AE call)."""
    steps: int = 30
    """Denoising steps counted in the full-video generation time."""
    device: str = "cpu"
    """cpu or cuda."""
    dtype: str = "fp32"
    """fp32 or bf16 (weights and activations)."""
    repeat: int = 3
    """Timed calls per measurement after one warm-up call."""
    csv: Path | None = None
    """Also write the compare-ae rows as CSV here."""
    plot: Path | None = None
    """Write a PNG bar chart of the speedups here."""
    quality: Path | None = None
    """prepare-data folder (videos.parquet): reconstruction PSNR/SSIM of each weighted AE."""
    ae_weights: list[str] = field(default_factory=list)
    """PRESET=PATH weights for `quality` (a save_autoencoder folder or a .safetensors file)."""
    attention: bool = False
    """Time the attention backends at a few token counts, forward and forward+backward."""
    kernels: bool = False
    """Time each kernel of vidcli_kernels against its PyTorch reference."""
    text_tokens: int | None = None
    """Text tokens per sample."""
    dit_blocks: str | None = None
    """'DOUBLE,SINGLE' block counts replacing the DiT preset's, e.g. '2,4'."""
    ae_timing: str = "auto"
    """AE timing: 'full' size, a scaled 'probe' clip, or 'auto' (probe on CPU, full on CUDA)."""
    quality_clips: int = 4
    """Clips of the `quality` manifest to reconstruct per AE."""


@dataclass(frozen=True)
class Settings:
    """Resolved sizes and method, shared by every row (picklable for the per-row process)."""

    device: str
    dtype: str
    height: int
    width: int
    frames: int
    batch_size: int
    steps: int
    text_tokens: int
    dit: str
    dit_blocks: tuple[int, int] | None
    repeat: int
    ae_timing: str
    threads: int


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


@dataclass
class BenchmarkResult:
    """Everything one `vidcli benchmark` call measured; sections not asked for stay empty."""

    env: dict[str, Any]
    rows: list[AERow] = field(default_factory=list)
    quality: list[dict[str, Any]] = field(default_factory=list)
    attention: list[dict[str, Any]] = field(default_factory=list)
    kernels: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        lines = [
            f"{r.ae}:{r.patch}\ttokens {r.tokens}\ttrain {r.train_step_s:.4g} s "
            f"({r.speedup_train:.2f}x)\tinfer step {r.infer_step_s:.4g} s "
            f"({r.speedup_infer:.2f}x)\tvideo {r.video_s:.4g} s ({r.speedup_video:.2f}x)"
            for r in self.rows
        ]
        lines += [f"{q['ae']}\tPSNR {q['psnr']:.2f} dB\tSSIM {q['ssim']:.4f}" for q in self.quality]
        lines += [
            f"attention {a['backend']}\t{a['tokens']} tokens\tfwd {_ms(a['forward_s'])}\t"
            f"fwd+bwd {_ms(a['fwd_bwd_s'])}"
            for a in self.attention
        ]
        lines += [
            f"kernel {k['kernel']} ({k['backend']})\t{_ms(k['kernel_s'])} vs reference "
            f"{_ms(k['reference_s'])}\t{k['speedup']:.2f}x\tmax err {k['max_abs_err']:.2e}"
            for k in self.kernels
        ]
        return lines + [f"wrote {p}" for p in self.files]


def _ms(seconds: float | None) -> str:
    return "skipped" if seconds is None else f"{seconds * 1e3:.3g} ms"


# ------------------------------------------------------------------------------- options


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


def _parse_blocks(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--dit-blocks {text!r}: expected DOUBLE,SINGLE block counts, e.g. 2,4")
    double, single = (int(p) for p in parts)
    return double, single


def _check_choice(option: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise UsageError(f"{option} {value!r}: expected one of {', '.join(allowed)}")


def resolve_settings(options: BenchmarkOptions, specs: list[AESpec]) -> Settings:
    """Fill the device defaults and check every size against every row; fail once, clearly."""
    from vidcli.models.mmdit import DIT_PRESETS

    _check_choice("--device", options.device, ("cpu", "cuda"))
    _check_choice("--dtype", options.dtype, tuple(DTYPES))
    _check_choice("--ae-timing", options.ae_timing, AE_TIMINGS)
    if options.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible", hint="use --device cpu")
    for name in ("batch_size", "steps", "repeat", "quality_clips"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be >= 1")
    defaults = DEFAULTS[options.device]
    dit = options.dit or defaults.dit
    _check_choice("--dit", dit, list(DIT_PRESETS))
    blocks = options.dit_blocks if options.dit else (options.dit_blocks or defaults.dit_blocks)
    height = options.resolution or defaults.resolution
    align = max((_spatial_compression(s.preset) * s.patch for s in specs), default=1)
    if height < align or height % align:
        raise ShapeError(
            f"--resolution {height}: every row needs a multiple of {align} "
            f"(AE compression x patch), e.g. {max(align, round(height / align) * align)}"
        )
    ae_timing = options.ae_timing
    if ae_timing == "auto":
        ae_timing = "full" if options.device == "cuda" else "probe"
    return Settings(
        device=options.device,
        dtype=options.dtype,
        height=height,
        width=max(align, round(height * ASPECT / align) * align),
        frames=options.frames or defaults.frames,
        batch_size=options.batch_size,
        steps=options.steps,
        text_tokens=options.text_tokens or defaults.text_tokens,
        dit=dit,
        dit_blocks=_parse_blocks(blocks),
        repeat=options.repeat,
        ae_timing=ae_timing,
        threads=torch.get_num_threads(),
    )


def _spatial_compression(preset: str) -> int:
    from vidcli.models.dcae import AE_PRESETS

    return AE_PRESETS[preset].spatial_compression


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


def environment(s: Settings) -> dict[str, Any]:
    """What the numbers depend on: software, device, threads, dtype and the benchmark sizes."""
    device = torch.device(s.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": s.device,
        "device_name": name,
        "threads": s.threads,
        "dtype": s.dtype,
        "seed": SEED,
        "warmup": WARMUP,
        "repeat": s.repeat,
        "statistic": "median; spread = (max - min) / median",
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------- compare-ae


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
    code = "from vidcli.benchmark import row_worker; row_worker()"
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


# ------------------------------------------------------------------------------- quality


def parse_weights(specs: list[str]) -> dict[str, Path]:
    """['PRESET=PATH', ...] -> {preset: path}; UsageError naming the bad entry."""
    from vidcli.models.dcae import AE_PRESETS

    weights = {}
    for spec in specs:
        preset, sep, path = spec.partition("=")
        if not sep or preset not in AE_PRESETS or not path:
            raise UsageError(
                f"--ae-weights {spec!r}: expected PRESET=PATH with PRESET one of "
                f"{', '.join(AE_PRESETS)}"
            )
        weights[preset] = Path(path)
    return weights


def reconstruction_quality(options: BenchmarkOptions, s: Settings) -> list[dict[str, Any]]:
    """PSNR/SSIM (pixels mapped to [0, 1]) of decode(encode(clip)) for each weighted AE."""
    from vidcli.data.datasets import VideoDataset
    from vidcli.models.dcae import TilingConfig, load_autoencoder

    manifest = Path(options.quality) / "videos.parquet"
    if not manifest.is_file():
        raise UsageError(
            f"--quality {options.quality}: no videos.parquet there",
            hint=f"vidcli prepare-data CLIPS/ --out {options.quality}",
        )
    weights = parse_weights(options.ae_weights)
    if not weights:
        raise UsageError("--quality needs --ae-weights PRESET=PATH for at least one AE")
    dataset = VideoDataset(manifest, num_frames=s.frames, height=s.height, width=s.width)
    clips = min(len(dataset), options.quality_clips)
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    results = []
    for preset, path in weights.items():
        ae = load_autoencoder(path, preset=preset if path.is_file() else None)
        ae = ae.to(device=device, dtype=dtype)
        if device.type == "cuda":
            ae.tiling = TilingConfig()
        scores = []
        for i in range(clips):
            x = dataset[i]["video"].unsqueeze(0).to(device=device, dtype=dtype)
            with torch.no_grad():
                rec = ae.decode(ae.encode(x))
            if rec.shape != x.shape:
                raise ShapeError(
                    f"{preset}: {s.frames} frames do not round-trip (got {rec.shape[2]}); "
                    "use 1 or a multiple of 8 frames"
                )
            # [-1, 1] -> [0, 1], clamped like a written video.
            a, b = (x.float() + 1) / 2, ((rec.float() + 1) / 2).clamp(0, 1)
            scores.append(
                (
                    metrics.psnr(a, b),
                    metrics.ssim(
                        rearrange(a, "b c t h w -> (b c t) h w"),
                        rearrange(b, "b c t h w -> (b c t) h w"),
                    ),
                )
            )
        results.append(
            {
                "ae": preset,
                "weights": str(path),
                "clips": clips,
                "psnr": sum(p for p, _ in scores) / clips,
                "ssim": sum(q for _, q in scores) / clips,
            }
        )
    return results


# ------------------------------------------------------------------------------- attention, kernels


def _attention_sizes(device: torch.device) -> tuple[int, int, tuple[int, ...], torch.dtype]:
    """(heads, head_dim, token counts, dtype): mmdit-s heads on CPU, the 11B's on CUDA."""
    if device.type == "cuda":
        return 24, 128, (4096, 18944, 74240), torch.bfloat16
    return 6, 64, (256, 1024, 2048), torch.float32


def _attention_backends(device: torch.device) -> dict[str, Any]:
    from vidcli_kernels.attention import _flash_attn_func, attention_reference

    backends: dict[str, Any] = {"sdpa": F.scaled_dot_product_attention}
    if device.type == "cuda":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def pinned(kind):
            def run(q, k, v):
                with sdpa_kernel(kind):
                    return F.scaled_dot_product_attention(q, k, v)

            return run

        backends = {
            "sdpa": F.scaled_dot_product_attention,
            "sdpa-cudnn": pinned(SDPBackend.CUDNN_ATTENTION),
            "sdpa-flash": pinned(SDPBackend.FLASH_ATTENTION),
            "sdpa-efficient": pinned(SDPBackend.EFFICIENT_ATTENTION),
        }
        if _flash_attn_func is not None:
            backends["flash_attn"] = lambda q, k, v: _flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2)
    backends["reference"] = attention_reference
    return backends


# The reference materialises (heads, L, L) float32 scores several times over.
_REFERENCE_SCORE_BYTES = {"cpu": 2**30, "cuda": 8 * 2**30}


def attention_bench(s: Settings) -> list[dict[str, Any]]:
    """Forward and forward+backward time of each attention backend at a few token counts."""
    device = torch.device(s.device)
    heads, dim, token_counts, dtype = _attention_sizes(device)
    rows = []
    for tokens in token_counts:
        torch.manual_seed(SEED)
        q, k, v = (
            torch.randn(1, heads, tokens, dim, device=device, dtype=dtype, requires_grad=True)
            for _ in range(3)
        )
        grad = torch.randn_like(q)
        flops = 4 * heads * tokens**2 * dim  # QK^T and PV; backward is 2.5x (five matmuls)
        for name, fn in _attention_backends(device).items():
            row = {"backend": name, "tokens": tokens, "heads": heads, "head_dim": dim}
            row.update(forward_s=None, fwd_bwd_s=None, forward_flops=None, fwd_bwd_flops=None)
            if name == "reference" and heads * tokens**2 * 4 > _REFERENCE_SCORE_BYTES[s.device]:
                rows.append({**row, "skipped": "scores too large for the reference"})
                continue
            try:
                fwd = time_calls(_no_grad(fn, q, k, v), device, s.repeat, WARMUP)
                both = time_calls(_fwd_bwd(fn, q, k, v, grad), device, s.repeat, WARMUP)
            except RuntimeError as e:  # a pinned SDPA backend that does not take this input
                rows.append({**row, "skipped": str(e).splitlines()[0]})
                continue
            row.update(
                forward_s=fwd.median,
                fwd_bwd_s=both.median,
                forward_flops=flops / fwd.median,
                fwd_bwd_flops=3.5 * flops / both.median,
                spread=max(fwd.spread, both.spread),
            )
            rows.append(row)
    return rows


def _no_grad(fn, *args):
    @torch.no_grad()
    def call() -> None:
        fn(*args)

    return call


def _fwd_bwd(fn, q, k, v, grad):
    def call() -> None:
        fn(q, k, v).backward(grad)
        q.grad = k.grad = v.grad = None

    return call


def kernels_bench(s: Settings) -> list[dict[str, Any]]:
    """Each vidcli_kernels kernel against its reference: time, speedup, largest difference."""
    from vidcli_kernels.attention import attention, attention_backend, attention_reference

    device = torch.device(s.device)
    heads, dim, token_counts, dtype = _attention_sizes(device)
    tokens = token_counts[0]
    torch.manual_seed(SEED)
    q, k, v = (torch.randn(1, heads, tokens, dim, device=device, dtype=dtype) for _ in range(3))
    kernel = time_calls(_no_grad(attention, q, k, v), device, s.repeat, WARMUP)
    reference = time_calls(_no_grad(attention_reference, q, k, v), device, s.repeat, WARMUP)
    err = (attention(q, k, v).float() - attention_reference(q, k, v).float()).abs().max().item()
    return [
        {
            "kernel": "attention",
            "backend": attention_backend(q),
            "shape": [1, heads, tokens, dim],
            "dtype": str(dtype).removeprefix("torch."),
            "kernel_s": kernel.median,
            "reference_s": reference.median,
            "speedup": reference.median / kernel.median,
            "max_abs_err": err,
        }
    ]


# ------------------------------------------------------------------------------- output


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


def write_plot(rows: list[AERow], env: dict[str, Any], path: Path) -> Path:
    """Grouped bars of the train / denoising-step / full-video speedups, values on the bars."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed", hint="pip install matplotlib"
        ) from None
    fig = Figure(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    kinds = [("speedup_train", "DiT train step"), ("speedup_infer", "denoising step")]
    kinds.append(("speedup_video", f"video ({env['steps']} steps + decode)"))
    width = 0.8 / len(kinds)
    for j, (key, label) in enumerate(kinds):
        xs = [i + (j - (len(kinds) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(xs, [getattr(r, key) for r in rows], width, label=label)
        ax.bar_label(bars, fmt="%.2fx", padding=2, fontsize=8)
    ax.set_xticks(range(len(rows)), [f"{r.ae}:{r.patch}\n{r.tokens} tokens" for r in rows])
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylabel(f"speedup vs {rows[0].ae}:{rows[0].patch} (x)")
    ax.set_xlabel("autoencoder : DiT patch size")
    h, w = env["resolution"]
    ax.set_title(
        f"{env['dit']} on {env['device_name'][:40]} ({env['dtype']}), "
        f"{env['frames']}x{h}x{w} px, batch {env['batch_size']}",
        fontsize=10,
    )
    ax.margins(y=0.15)
    ax.legend(loc="upper left", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def print_table(result: BenchmarkResult) -> None:
    """The compare-ae rows as a rich table on stderr (stdout stays for results)."""
    from rich.console import Console
    from rich.table import Table

    from vidcli.console import quiet_enabled, stderr

    if quiet_enabled() or not result.rows:
        return
    env = result.env
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
    for r in result.rows:
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


# ------------------------------------------------------------------------------- entry point


def run(options: BenchmarkOptions) -> BenchmarkResult:
    """Check every option, then run the benchmarks asked for and write the requested files."""
    specs = [parse_ae_spec(a) for a in (options.ae or DEFAULT_AES)]
    if options.ae_weights and options.quality is None:
        raise UsageError("--ae-weights is used by --quality DATASET_DIR; add it or drop them")
    weights = parse_weights(options.ae_weights)
    if options.quality is not None and not weights:
        raise UsageError("--quality needs --ae-weights PRESET=PATH for at least one AE")
    if (options.csv or options.plot) and not options.compare_ae:
        raise UsageError("--csv and --plot write the --compare-ae rows; add --compare-ae")
    # Every AE that will see the video size decides which sizes are valid.
    sized = (specs if options.compare_ae else []) + [AESpec(p, 1) for p in weights]
    settings = resolve_settings(options, sized)
    result = BenchmarkResult(env=environment(settings))
    if options.compare_ae:
        result.rows, env = compare_autoencoders(specs, settings)
        result.env.update(env)
    if options.quality is not None:
        result.quality = reconstruction_quality(options, settings)
        by_preset = {q["ae"]: q for q in result.quality}
        for row in result.rows:
            if row.ae in by_preset:
                row.psnr, row.ssim = by_preset[row.ae]["psnr"], by_preset[row.ae]["ssim"]
    if options.attention:
        result.attention = attention_bench(settings)
    if options.kernels:
        result.kernels = kernels_bench(settings)
    if options.csv:
        result.files.append(write_csv(result.rows, Path(options.csv)))
    if options.plot:
        result.files.append(write_plot(result.rows, result.env, Path(options.plot)))
    print_table(result)
    return result
