"""Cache state per evaluation stream and per CFG branch (issue 27): rf2's midpoints get their own
policy, and TaylorSeer counts steps per branch when guidance oscillation drops the negative rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vidcli import flow
from vidcli.models.mmdit import MMDiTConfig
from vidcli.models.mmdit.model import MMDiT
from vidcli.sampling.cache.base import CachePolicy
from vidcli.sampling.cache.runner import CachedDiT
from vidcli.sampling.cache.taylorseer import TaylorSeer, TaylorSeerLite

SLOPES = {"cond": 1.0, "uncond": -3.0}
"""Per branch, the fake stack residual grows linearly in the step with this slope."""


class LinearRun:
    """A `StepRun` stand-in whose stack residual (and only module) is linear in the step, per
    branch, so a first-order Taylor forecast with the right offsets and gaps is exact."""

    def __init__(self, step: int, branches: tuple[str, ...]):
        self.step, self.branches, self.rows, self.kind = step, branches, 1, "full"
        self.embedded = SimpleNamespace(x=torch.full((len(branches), 2, 3), 0.5))

    def exact(self) -> torch.Tensor:
        return torch.cat([(self.step + 1) * SLOPES[b] * torch.ones(1, 2, 3) for b in self.branches])

    def compute(self, hook_for=None) -> torch.Tensor:
        value = self.exact()
        if hook_for is not None:
            value = hook_for(0).provide((0, "out"), lambda: value)
        return self.embedded.x + value

    def head(self, image: torch.Tensor) -> torch.Tensor:
        return image


def oscillating_layout(step: int) -> tuple[str, ...]:
    """sample_i2v's t2v layout with text oscillation from step 2: odd steps run the cond rows."""
    return ("cond",) if step >= 2 and step % 2 == 1 else ("cond", "uncond")


@pytest.mark.parametrize("policy", [TaylorSeer(3), TaylorSeerLite(3)], ids=lambda p: p.name)
def test_taylorseer_forecasts_each_branch_from_its_own_full_steps(policy):
    # Full steps 0, 1, 2, 5, 8; step 5 runs the cond rows only, so the uncond rows' last full step
    # stays 2 and steps 6, 7 (uncond at 6) must be forecast from there.
    kinds = []
    for step in range(10):
        run = LinearRun(step, oscillating_layout(step))
        out = policy(run)
        kinds.append(run.kind)
        torch.testing.assert_close(out, run.embedded.x + run.exact(), msg=f"step {step}")
    assert kinds == ["full"] * 3 + ["skipped"] * 2 + ["full"] + ["skipped"] * 2 + [
        "full",
        "skipped",
    ]


class StepLog(CachePolicy):
    """Computes everything and logs the step of each call it serves."""

    def __init__(self):
        self.seen: list[int] = []

    def __call__(self, run):
        self.seen.append(run.step)
        return super().__call__(run)


def test_rf2_midpoints_are_their_own_stream():
    torch.manual_seed(0)
    cfg = MMDiTConfig(
        in_channels=16, vec_in_dim=8, context_in_dim=12, hidden_size=32, num_heads=2, depth=1,
        depth_single_blocks=1, axes_dim=(4, 6, 6), cond_embed=True, fused_qkv=False,
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        noise=torch.randn(1, 4, 2, 4, 4, generator=g),
        txt=torch.randn(1, 5, 12, generator=g),
        y_vec=torch.randn(1, 8, generator=g),
        neg_txt=torch.randn(1, 5, 12, generator=g),
        neg_y_vec=torch.randn(1, 8, generator=g),
    )
    steps = 4
    policy = StepLog()
    runner = CachedDiT(MMDiT(cfg).eval(), policy, steps)
    schedule = flow.inference_schedule(steps, 4, 2)
    with torch.no_grad():
        x = flow.sample_i2v(runner, schedule=schedule, hooks=runner, solver="rf2", **inputs)
    assert torch.isfinite(x).all()
    # Each stream serves steps 0..3 once (one policy would see 0, 0, 1, 1, ...: a step gap of 0).
    assert policy.seen == list(range(steps))
    assert runner.midpoint_policy.seen == list(range(steps))
    assert runner.stats.full_evals == 2 * steps
