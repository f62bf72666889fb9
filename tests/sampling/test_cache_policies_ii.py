"""Caching II: FoCa, SpeCa, MagCache and EasyCache on a tiny MMDiT (exactness at "always compute",
forecast orders on synthetic sequences, SpeCa's per-sample verification, MagCache's calibration
file), sampled with CFG so every policy sees two branches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny_models import tiny_cfg_dit

from vidcli import flow
from vidcli.errors import UsageError
from vidcli.sampling.cache import CacheCalibration, CachedDiT, CacheSpec, build_policy, parse_cache
from vidcli.sampling.cache.calibration import Recorder, load_calibration, save_calibration
from vidcli.sampling.cache.foca import combine, foca_weights
from vidcli.sampling.cache.magcache import MAX_SKIPS, RETENTION, MagCache
from vidcli.sampling.cache.speca import SpeCa, taylor1

STEPS = 14
N, C, T, H, W = 2, 4, 3, 4, 4


@pytest.fixture(scope="module")
def tiny():
    return tiny_cfg_dit(STEPS, (N, C, T, H, W))


@pytest.fixture(scope="module")
def calibration(tiny):
    recorder = Recorder(STEPS, ditfastattn=False)
    _sample(tiny, recorder)
    return recorder.calibration()


def _sample(tiny, policy):
    model, inputs, schedule = tiny
    fn = model.forward_video if policy is None else CachedDiT(model, policy, STEPS)
    with torch.no_grad():
        x = flow.sample_i2v(fn, schedule=schedule, hooks=None if policy is None else fn, **inputs)
    return x, (fn.stats if policy is not None else None)


# The setting at which each method reuses nothing.
ALWAYS = {
    "foca": "foca:1",
    "speca": "speca:4:0",
    "magcache": "magcache:0",
    "easycache": "easycache:0",
}


@pytest.mark.parametrize("name", sorted(ALWAYS))
def test_always_compute_reproduces_uncached_exactly(tiny, calibration, name):
    reference, _ = _sample(tiny, None)
    policy = build_policy(parse_cache(ALWAYS[name]), calibration, STEPS, frames=T)
    out, stats = _sample(tiny, policy)
    assert torch.equal(out, reference)
    assert stats.full_evals == STEPS and stats.partial_evals == stats.skipped_evals == 0
    # SpeCa at τ = 0 still drafts and verifies before rejecting: its checks cost a little
    assert stats.blocks_computed >= STEPS * 4


def _polynomial(degree: int, t: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(degree)
    coeffs = torch.randn(degree + 1, 3, 5, generator=g)
    return sum(c * t**i for i, c in enumerate(coeffs))


@pytest.mark.parametrize("steps", [[0, 1, 2], [1, 2, 7], [2, 7, 12], [0, 3, 4]])
@pytest.mark.parametrize("target_offset", [1, 3, 6])
def test_foca_is_exact_on_quadratic_sequences(steps, target_offset):
    target = steps[-1] + target_offset
    values = [_polynomial(2, t) for t in steps]
    got = combine(values, foca_weights(steps, target))
    torch.testing.assert_close(got, _polynomial(2, target), rtol=1e-4, atol=1e-4)
    # ... and only second order: a cubic is missed
    cubic = combine([_polynomial(3, t) for t in steps], foca_weights(steps, target))
    assert not torch.allclose(cubic, _polynomial(3, target), rtol=1e-3, atol=1e-3)


def test_foca_with_two_full_steps_is_exact_on_lines():
    got = combine([_polynomial(1, 2.0), _polynomial(1, 5.0)], foca_weights([2, 5], 9))
    torch.testing.assert_close(got, _polynomial(1, 9.0), rtol=1e-4, atol=1e-4)


def test_speca_draft_is_exact_on_linear_sequences_with_per_sample_offsets():
    # Two prompts last computed at different steps: Δ¹ is the slope, k each prompt's own offset
    slope, start = torch.randn(2, 4), torch.randn(2, 4)
    offsets = torch.tensor([1, 4])
    got = taylor1(start, slope, offsets)
    torch.testing.assert_close(got, start + offsets[:, None] * slope)


def test_speca_forecast_through_the_policy_is_exact_on_linear_features(tiny):
    # Drive the policy's tables directly: full steps at 0..2 on features linear in the step, then
    # a forecast 3 steps later must land on the line for every prompt.
    policy = SpeCa(8, 1.0)
    line = lambda t: torch.arange(6.0).view(2, 3) * t + 1.0  # noqa: E731
    for b in ("cond",):
        policy.last[b] = torch.tensor([2, 2])
        policy.factors[b] = {(0, "out"): [line(2), line(2) - line(1)]}
    d0, d1 = policy.factors["cond"][(0, "out")]
    torch.testing.assert_close(taylor1(d0, d1, 5 - policy.last["cond"]), line(5))


def test_speca_rejects_a_forecast_whose_error_exceeds_tau(tiny):
    # Accept-everything run: the errors of the first verified step (step 3, one per prompt).
    probe = SpeCa(100, float("inf"))
    _sample(tiny, probe)
    first = [c for c in probe.checks if c[0] == 3]
    assert [c[1] for c in first] == list(range(N)) and all(c[3] for c in first)
    errors = [c[2] for c in first]
    assert errors[0] != errors[1]
    tau = sum(errors) / 2  # between the two prompts' errors
    policy = SpeCa(100, tau)
    _, stats = _sample(tiny, policy)
    step3 = [c for c in policy.checks if c[0] == 3]
    assert [c[2] for c in step3] == pytest.approx(errors)
    # the prompt over τ is rejected (recomputed), the other keeps its forecast: a partial call
    assert [c[3] for c in step3] == [e < tau for e in errors] and sum(c[3] for c in step3) == 1
    assert stats.kinds[:4] == ["full", "full", "full", "partial"]
    # per-sample work: more than a forecast, less than a full batched evaluation
    assert 0 < stats.blocks_computed < stats.blocks_total


def test_magcache_calibration_round_trips_through_the_file(tmp_path, tiny, calibration):
    curve = calibration.magcache[str(STEPS)]
    assert len(curve) == STEPS and curve[0] == 1.0 and all(g > 0 for g in curve)
    assert len(set(curve[1:])) > 1  # measured per step, not a constant
    path = tmp_path / "cache-calibration.json"
    save_calibration(calibration, path)
    loaded = load_calibration(path)
    assert loaded.magcache == calibration.magcache
    assert loaded.merge(loaded).magcache == calibration.magcache
    a, _ = _sample(tiny, build_policy(parse_cache("magcache:0.3"), calibration, STEPS))
    b, _ = _sample(tiny, build_policy(parse_cache("magcache:0.3"), loaded, STEPS))
    assert torch.equal(a, b)


def test_magcache_needs_a_curve_for_the_step_count(calibration):
    with pytest.raises(UsageError, match=r"magcache.*no calibration for 15 steps"):
        build_policy(parse_cache("magcache:0.1"), calibration, STEPS + 1)


def test_magcache_huge_delta_skips_at_most_k_in_a_row(tiny, calibration):
    _, stats = _sample(tiny, build_policy(CacheSpec("magcache", 1e9), calibration, STEPS))
    kinds = stats.kinds
    retained = [i for i in range(STEPS) if i < RETENTION * STEPS]
    assert all(kinds[i] == "full" for i in retained) and kinds[-1] == "full"
    run = 0
    for k in kinds:
        run = run + 1 if k == "skipped" else 0
        assert run <= MAX_SKIPS
    assert kinds.count("skipped") > 0


def test_easycache_spends_its_budget_per_sample(tiny):
    _, stats = _sample(tiny, build_policy(parse_cache("easycache:1e9"), CacheCalibration(), STEPS))
    # warm-up then reuse forever: k needs two full steps, which the 3 warm-up steps give
    assert stats.kinds[:3] == ["full"] * 3 and set(stats.kinds[3:]) == {"skipped"}
    # a finite budget recomputes some steps
    _, some = _sample(tiny, build_policy(parse_cache("easycache:0.3"), CacheCalibration(), STEPS))
    assert 3 < some.full_evals + some.partial_evals < STEPS


def test_parse_speca_interval_and_threshold():
    assert parse_cache("speca") == CacheSpec("speca", 8, 0.1)
    spec = parse_cache("speca:6:0.05")
    assert spec == CacheSpec("speca", 6, 0.05) and str(spec) == "speca:6:0.05"
    assert parse_cache(str(spec)) == spec
    for bad in ("speca:6:x", "speca:6:-1", "foca:5:0.1", "speca:0.5"):
        with pytest.raises(UsageError):
            parse_cache(bad)


class BranchRun:
    """A `StepRun` stand-in: its stack residual at step t is t + 100 in the cond row and -t in
    the uncond row, so an output tells which step each branch's residual was computed at."""

    def __init__(self, step: int, branches: tuple[str, ...], num_steps: int = 20):
        self.step, self.branches, self.num_steps, self.rows, self.kind = step, branches, 20, 1, ""
        self.batch, self.last = len(branches), step == num_steps - 1
        self.embedded = SimpleNamespace(x=torch.zeros(len(branches), 2, 3))

    def compute(self) -> torch.Tensor:
        marks = {"cond": self.step + 100.0, "uncond": -float(self.step)}
        return torch.cat([torch.full((1, 2, 3), marks[b]) for b in self.branches])

    def head(self, image: torch.Tensor) -> torch.Tensor:
        return image


def test_magcache_counts_each_branch_from_its_own_last_computed_step():
    # γ = 0.9 everywhere: E after 1, 2, 3 steps = 0.1, 0.29, 0.56, so δ = 0.3 allows 2 skips.
    # From step 4 odd steps run the cond row only (guidance oscillation). Step 9 computes cond
    # alone; at step 10 the uncond row is 4 steps old (E = 0.1 + 0.19 + 0.27 + 0.34 > δ), so the
    # call is computed although cond's own error is only 0.1.
    policy = MagCache(0.3, [1.0] + [0.9] * 19)
    computed: dict[str, int] = {}
    kinds = []
    for step in range(12):
        branches = ("cond",) if step >= 4 and step % 2 else ("cond", "uncond")
        run = BranchRun(step, branches)
        out = policy(run)
        kinds.append(run.kind)
        if run.kind != "skipped":
            computed.update({b: step for b in branches})
        expected = [computed["cond"] + 100.0, -float(computed["uncond"])][: len(branches)]
        assert out[:, 0, 0].tolist() == expected, f"step {step}"
    assert kinds[4:] == ["skipped", "skipped", "", "skipped", "skipped", "", "", "skipped"]


def test_benchmark_pairs_are_held_out_from_tuning_and_calibration():
    from vidcli.benchmark.caching import CALIBRATION_PROMPTS, HELD_OUT_PAIRS, TUNING_PROMPTS

    prompts = [p for p, _ in HELD_OUT_PAIRS]
    seeds = [s for _, s in HELD_OUT_PAIRS]
    assert len(set(HELD_OUT_PAIRS)) >= 8
    assert not set(prompts) & (set(TUNING_PROMPTS) | set(CALIBRATION_PROMPTS))
    # tuning seeds are the recipe's (seed + i, small), calibration's 1000 + i
    assert not set(seeds) & (set(range(100)) | set(range(1000, 1000 + len(CALIBRATION_PROMPTS))))
