"""The sampler-side options of `[sample]`: solver, Linear Proportional Leap, token merging and
sparse attention, turned into what the sampling loop takes (a leap rule, hooks) and the attention
plan the DiT's attention calls go through while it samples."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vidcli.errors import UsageError
from vidcli.flow import LeapConfig, SamplingHooks, StepInfo
from vidcli.recipe import SampleSection
from vidcli_kernels.attention import use_attention_plan
from vidcli_kernels.sparse_attention import SparsePattern
from vidcli_kernels.video_attention import VideoAttentionConfig, VideoAttentionPlan


class HookChain(SamplingHooks):
    """Several hooks told the same events, in order."""

    def __init__(self, *hooks: SamplingHooks | None):
        self.hooks = [h for h in hooks if h is not None]

    def before_evaluation(self, info: StepInfo) -> None:
        for hook in self.hooks:
            hook.before_evaluation(info)

    def end_run(self) -> None:
        for hook in self.hooks:
            hook.end_run()


class PlanHooks(SamplingHooks):
    """Tells an attention plan which step each evaluation belongs to."""

    def __init__(self, plan: VideoAttentionPlan):
        self.plan = plan

    def before_evaluation(self, info: StepInfo) -> None:
        self.plan.begin_evaluation(info.step)


def _triple(values: list[int], key: str, minimum: int) -> tuple[int, int, int]:
    if len(values) != 3 or any(not isinstance(v, int) or v < minimum for v in values):
        raise UsageError(
            f"[sample] {key} = {values}: expected 3 integers >= {minimum} for (t, h, w)"
        )
    return values[0], values[1], values[2]


def attention_config(sample: SampleSection) -> VideoAttentionConfig | None:
    """The attention plan's settings from `[sample]`, or None when TDTM and sparsity are off."""
    pattern = None
    if sample.sparse_attention != "off":
        pattern = SparsePattern(
            sample.sparse_attention,
            window=_triple(sample.sparse_window, "sparse_window", 0),
            tile=_triple(sample.sparse_tile, "sparse_tile", 1),
            global_frames=sample.sparse_global_frames,
        )
    if pattern is None and sample.tdtm_steps == 0:
        return None
    return VideoAttentionConfig(
        pattern=pattern,
        dense_steps=sample.sparse_dense_steps,
        full_every=sample.sparse_full_every,
        residual=sample.sparse_residual,
        merge_steps=sample.tdtm_steps,
    )


def leap_config(sample: SampleSection) -> LeapConfig | None:
    """The LPL rule for this run's step count, or None."""
    if not sample.lpl:
        return None
    return LeapConfig.for_steps(sample.steps, sample.lpl_start, sample.lpl_patience)


@dataclass
class Acceleration:
    """What `flow.sample_i2v` takes for the `[sample]` options, plus the plan for reporting."""

    solver: str
    leap: LeapConfig | None
    hooks: SamplingHooks | None
    plan: VideoAttentionPlan | None


@contextmanager
def sampling_acceleration(
    sample: SampleSection, grid: tuple[int, int, int], hooks: SamplingHooks | None = None
) -> Iterator[Acceleration]:
    """Sample inside this block: the DiT's attention goes through the plan (if any).

    grid: image token grid (T_lat, H_lat/p, W_lat/p); hooks: other hooks to chain (a cache).
    """
    config = attention_config(sample)
    plan = VideoAttentionPlan(config, grid) if config is not None else None
    chained = HookChain(hooks, PlanHooks(plan) if plan is not None else None)
    with use_attention_plan(plan):
        yield Acceleration(sample.solver, leap_config(sample), chained, plan)
