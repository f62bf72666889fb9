"""What `vidcli benchmark` measures: the options, the device defaults, the resolved settings every
benchmark module shares, and the environment the numbers depend on."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vidcli.errors import ShapeError, UsageError
from vidcli_kernels.linear import cpu_linear_backend, cpuinfo_field

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
AE_TIMINGS = ("auto", "probe", "full")
GRAD_CHECKPOINTING = ("auto", "on", "off")
SEED = 0
WARMUP = 1
ASPECT = 16 / 9


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
    """PRESET:PATCH rows (first = baseline); empty: compare_ae.DEFAULT_AES."""
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
    """cpu, cuda or cuda:N."""
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
    grad_checkpointing: str = "auto"
    """Per-block activation checkpointing of the compare-ae DiT steps: 'on', 'off', or 'auto'
    (on for a row whose step would not fit the device's free memory without it)."""
    compile: str = "off"
    """`torch.compile` of every row's DiT (`vidcli.compile`): off, blocks or forward; the warm-up
    round compiles, and each row reports its compile seconds apart."""


@dataclass(frozen=True)
class Settings:
    """Resolved sizes and method, shared by every row (picklable for the per-row process)."""

    device: str
    """One device, index included when given (`cuda:1`); `device_type` for per-kind choices."""
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
    grad_checkpointing: str = "auto"
    """'auto', 'on' or 'off' (see BenchmarkOptions); each row records what it used."""
    compile: str = "off"
    """off, blocks or forward (see BenchmarkOptions)."""

    @property
    def device_type(self) -> str:
        """'cpu' or 'cuda': what defaults and memory rules depend on (never where to compute)."""
        return torch.device(self.device).type


def parse_blocks(text: str | None) -> tuple[int, int] | None:
    """'DOUBLE,SINGLE' -> (double, single); UsageError otherwise."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UsageError(f"--dit-blocks {text!r}: expected DOUBLE,SINGLE block counts, e.g. 2,4")
    double, single = (int(p) for p in parts)
    return double, single


def check_choice(option: str, value: str, allowed: Sequence[str]) -> None:
    """UsageError listing `allowed` unless `value` is one of them."""
    if value not in allowed:
        raise UsageError(f"{option} {value!r}: expected one of {', '.join(allowed)}")


def resolve_settings(options: BenchmarkOptions, align: int = 1) -> Settings:
    """Fill the device defaults and check every size; fail once, clearly.

    `align`: the multiple of pixels every row needs in H and W (AE compression x DiT patch).
    """
    from vidcli.compile import COMPILE_MODES
    from vidcli.devices import resolve_device
    from vidcli.models.mmdit import DIT_PRESETS

    where = resolve_device(options.device)  # cpu, cuda or cuda:N, and visible
    check_choice("--dtype", options.dtype, tuple(DTYPES))
    check_choice("--ae-timing", options.ae_timing, AE_TIMINGS)
    check_choice("--grad-checkpointing", options.grad_checkpointing, GRAD_CHECKPOINTING)
    check_choice("--compile-mode", options.compile, COMPILE_MODES)
    for name in ("batch_size", "steps", "repeat", "quality_clips"):
        if getattr(options, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(options, name)}: must be >= 1")
    defaults = DEFAULTS[where.type]
    dit = options.dit or defaults.dit
    check_choice("--dit", dit, list(DIT_PRESETS))
    blocks = options.dit_blocks if options.dit else (options.dit_blocks or defaults.dit_blocks)
    height = options.resolution or defaults.resolution
    if height < align or height % align:
        raise ShapeError(
            f"--resolution {height}: every row needs a multiple of {align} "
            f"(AE compression x patch), e.g. {max(align, round(height / align) * align)}"
        )
    ae_timing = options.ae_timing
    if ae_timing == "auto":
        ae_timing = "full" if where.type == "cuda" else "probe"
    return Settings(
        device=str(where),
        dtype=options.dtype,
        height=height,
        width=max(align, round(height * ASPECT / align) * align),
        frames=options.frames or defaults.frames,
        batch_size=options.batch_size,
        steps=options.steps,
        text_tokens=options.text_tokens or defaults.text_tokens,
        dit=dit,
        dit_blocks=parse_blocks(blocks),
        repeat=options.repeat,
        ae_timing=ae_timing,
        threads=torch.get_num_threads(),
        grad_checkpointing=options.grad_checkpointing,
        compile=options.compile,
    )


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
        "cpu_linear": cpu_linear_backend(),  # oneDNN or MKL for fp32 CPU linears
        "dtype": s.dtype,
        "seed": SEED,
        "warmup": WARMUP,
        "repeat": s.repeat,
        "statistic": "median; spread = (max - min) / median",
    }


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()
