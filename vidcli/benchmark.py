"""`vidcli benchmark`: measured, side-by-side comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vidcli.errors import StageFailed


@dataclass
class BenchmarkOptions:
    compare_ae: bool = False
    ae: list[str] = field(default_factory=list)
    dit: str | None = None
    resolution: int | None = None
    frames: int | None = None
    batch_size: int = 1
    steps: int = 30
    device: str = "cpu"
    dtype: str = "fp32"
    repeat: int = 3
    csv: Path | None = None
    plot: Path | None = None
    quality: Path | None = None
    ae_weights: list[str] = field(default_factory=list)
    attention: bool = False
    kernels: bool = False


def run(options: BenchmarkOptions) -> None:
    raise StageFailed("benchmark is not built yet (issue #8)")
