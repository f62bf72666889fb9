"""Timing helpers shared by `vidcli benchmark` and `benchmarks/`: synchronised wall-clock timing,
median and spread over repeats, and a measured dense-matmul peak to count MFU against."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a wall-clock reading covers it (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds of each timed call of one measurement."""

    seconds: tuple[float, ...]
    """One entry per timed call, in order (warm-up calls excluded)."""

    @property
    def median(self) -> float:
        """Median seconds per call: robust to one slow outlier (a page fault, another process)."""
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median over the timed calls: 0 for one call or perfectly steady ones."""
        return (max(self.seconds) - min(self.seconds)) / self.median


def time_calls(
    fn: Callable[[], object], device: torch.device | str, repeat: int, warmup: int = 1
) -> Timing:
    """Time `repeat` calls of `fn` one by one, after `warmup` untimed calls.

    The device is synchronised before and after each call, so queued GPU work counts in the call
    that launched it and not in the next one.
    """
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(tuple(seconds))


def time_once(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds of one call of `fn`, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    fns: Sequence[Callable[[], float]], repeat: int, warmup: int = 1
) -> list[Timing]:
    """Time rows A, B, ... alternately (A B A B ...), `warmup` untimed rounds first.

    Each `fn` runs one call and returns its seconds (see `time_once`). Interleaving puts every
    row's i-th call in the same moment of a busy machine, so `median_ratio` of two rows survives
    a neighbouring job that would skew rows timed one after the other.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    seconds: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for row, fn in zip(seconds, fns, strict=True):
            row.append(fn())
    return [Timing(tuple(row)) for row in seconds]


def median_ratio(numerator: Timing, denominator: Timing) -> float:
    """Median over rounds of numerator[i] / denominator[i] (rounds timed together, interleaved)."""
    return statistics.median(
        a / b for a, b in zip(numerator.seconds, denominator.seconds, strict=True)
    )


def time_call(
    fn: Callable[[], object], device: torch.device | str, repeat: int, warmup: int = 1
) -> float:
    """Mean seconds of one call after `warmup` calls (one synchronised window for all repeats)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeat


def measure_matmul_peak(
    device: torch.device | str, dtype: torch.dtype, n: int | None = None, repeat: int = 10
) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` (n = 8192 on CUDA, 1024 on CPU)."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_call(lambda: a @ b, device, repeat, warmup=2)
    return 2 * n**3 / seconds
