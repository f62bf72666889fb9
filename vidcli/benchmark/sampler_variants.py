"""Rows of the sampler-side accelerations for `vidcli benchmark --caching --samplers`: RF-Solver
at half the steps, Linear Proportional Leap and Temporal Dimension Token Merging, measured in the
same table and plot as the caches (each row samples the same prompts and seeds as the full run)."""

from __future__ import annotations

from vidcli.benchmark.variants import SamplingVariant

LPL_STARTS = (0.3, 0.47)
"""Fractions of the steps before LPL's cosine test starts (0.47: the authors' 14 of 30)."""
TDTM_FRACTIONS = (0.2, 0.5)
"""Fractions of the steps sampled with merged frame pairs."""


def sampler_variants(steps: int) -> list[SamplingVariant]:
    """rf2 at steps/2 (the same DiT evaluations as Euler at `steps`), LPL and TDTM rows."""
    rows = [
        SamplingVariant(f"rf2:{steps // 2}", "rf2", sample={"solver": "rf2", "steps": steps // 2})
    ]
    rows += [
        SamplingVariant(f"lpl:{start}", "lpl", sample={"lpl": True, "lpl_start": start})
        for start in LPL_STARTS
    ]
    rows += [
        SamplingVariant(f"tdtm:{round(f * steps)}", "tdtm", sample={"tdtm_steps": round(f * steps)})
        for f in TDTM_FRACTIONS
    ]
    return rows
