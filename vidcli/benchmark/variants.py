"""The row type of `vidcli benchmark --caching`, apart from the benchmark itself so that modules
which contribute rows (`sampler_variants`) need not import the benchmark that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingVariant:
    """One row: how to sample, and where it goes in the plot."""

    name: str
    """Row label, e.g. "teacache:0.2" or "rf2"."""
    family: str
    """Plot series, e.g. "teacache" (the uniform control is "uniform")."""
    cache: str = "none"
    """A `--cache` spec."""
    sample: dict[str, Any] = field(default_factory=dict)
    """`[sample]` fields replaced for this row (e.g. {"solver": "rf2"})."""
