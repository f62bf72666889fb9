"""Caching policies: exactness when computing everything, threshold limits, CLI-level errors,
calibration round trips (issue 15)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_cfg_dit

from vidcli import flow
from vidcli.errors import UsageError
from vidcli.sampling.cache import (
    METHODS,
    CacheCalibration,
    CachedDiT,
    CacheSpec,
    build_policy,
    parse_cache,
)
from vidcli.sampling.cache.calibration import Recorder, load_calibration, save_calibration

# 14 steps: with text oscillation (from 20 % of the schedule) the t2v loop evaluates only the
# conditional rows at the odd steps 3..13, so every policy crosses a layout change in both
# directions.
STEPS = 14
N, C, T, H, W = 2, 4, 3, 4, 4


@pytest.fixture(scope="module")
def tiny():
    return tiny_cfg_dit(STEPS, (N, C, T, H, W))


def _calibration(tiny) -> CacheCalibration:
    recorder = Recorder(STEPS)
    _sample(tiny, recorder)
    return recorder.calibration()


@pytest.fixture(scope="module")
def calibration(tiny):
    return _calibration(tiny)


def _sample(tiny, policy):
    model, inputs, schedule = tiny
    fn = model.forward_video if policy is None else CachedDiT(model, policy, STEPS)
    hooks = None if policy is None else fn
    with torch.no_grad():
        x = flow.sample_i2v(fn, schedule=schedule, hooks=hooks, **inputs)
    return x, (fn.stats if policy is not None else None)


def _policy(name, value, calibration):
    return build_policy(CacheSpec(name, value), calibration, STEPS, frames=T)


# "Always compute" for each method: the setting at which it reuses nothing.
ALWAYS = {
    "uniform": 1,
    "teacache": 0.0,
    "adacache": 0.0,
    "toca": 1,
    "smoothcache": 0.0,
    "ditfastattn": 0.0,
    "fbcache": 0.0,
    "taylorseer": 1,
    "taylorseer-lite": 1,
}


@pytest.mark.parametrize("name", sorted(ALWAYS))
def test_always_compute_reproduces_uncached_exactly(tiny, calibration, name):
    reference, _ = _sample(tiny, None)
    out, stats = _sample(tiny, _policy(name, ALWAYS[name], calibration))
    assert torch.equal(out, reference)
    assert (stats.full_evals, stats.partial_evals, stats.skipped_evals) == (STEPS, 0, 0)
    assert stats.blocks_computed == pytest.approx(STEPS * 4)


# Steps each method computes however large its threshold / interval.
FORCED = {
    "uniform": [0, STEPS - 1],
    "teacache": [0, STEPS - 1],
    "fbcache": [0],
    "taylorseer": [0, 1, 2],
    "taylorseer-lite": [0, 1, 2],
}


@pytest.mark.parametrize("name", sorted(FORCED))
def test_huge_threshold_computes_only_forced_steps(tiny, calibration, name):
    _, stats = _sample(tiny, _policy(name, 10**9, calibration))
    assert [i for i, k in enumerate(stats.kinds) if k == "full"] == FORCED[name]
    assert stats.full_evals + stats.partial_evals + stats.skipped_evals == STEPS


def test_huge_threshold_adacache_computes_forced_and_codebook_steps(tiny, calibration):
    # The largest codebook rate (6 at 30 steps, scaled to 14 steps: 3) bounds every reuse.
    _, stats = _sample(tiny, _policy("adacache", 10**9, calibration))
    assert [i for i, k in enumerate(stats.kinds) if k == "full"] == [0, 1, 4, 7, 10, 12, 13]


def test_huge_threshold_smoothcache_reuses_lookahead_steps(tiny, calibration):
    _, stats = _sample(tiny, _policy("smoothcache", 10**9, calibration))
    # Compute at 0, reuse the next LOOKAHEAD (5) steps, compute at 6, ..., and at the last step.
    assert [i for i, k in enumerate(stats.kinds) if k == "full"] == [0, 6, 12, 13]


def test_huge_threshold_ditfastattn_attends_only_at_step_0(tiny, calibration):
    _, stats = _sample(tiny, _policy("ditfastattn", 10**9, calibration))
    assert stats.kinds == ["full"] + ["partial"] * (STEPS - 1)


def test_toca_huge_interval_partial_after_warmup(tiny, calibration):
    _, stats = _sample(tiny, _policy("toca", 10**9, calibration))
    assert stats.kinds == ["full"] * 3 + ["partial"] * (STEPS - 3)
    assert 0 < stats.blocks_computed < STEPS * 4


# A setting at which each method reuses something on the tiny model: its default, except where
# the default's threshold is never crossed by this random model's small changes.
REUSES = {name: METHODS[name].default for name in ALWAYS} | {"adacache": 0.2, "fbcache": 0.4}


@pytest.mark.parametrize("name", sorted(ALWAYS))
def test_caching_changes_output_but_stays_close(tiny, calibration, name):
    # The cached run must really reuse something: fewer blocks than uncached, and an output that
    # moved by more than float noise (a policy computing everything fails both).
    reference, _ = _sample(tiny, None)
    out, stats = _sample(tiny, _policy(name, REUSES[name], calibration))
    assert stats.partial_evals + stats.skipped_evals > 0
    assert stats.blocks_computed < 0.95 * stats.blocks_total
    rel = ((out - reference).norm() / reference.norm()).item()
    assert 1e-4 < rel < 0.5


def test_toca_ratio_is_toca_flux_schedule():
    # ToCa-FLUX: R0·(1.5 - ℓ/27)·(0.4 double | 1.6 single), ℓ counted within its stream.
    from vidcli.sampling.cache.toca import fresh_ratio

    depth = 19  # FLUX.1: 19 double then 38 single blocks
    assert fresh_ratio(0, depth) == pytest.approx(0.1 * 1.5 * 0.4)
    assert fresh_ratio(18, depth) == pytest.approx(0.1 * (1.5 - 18 / 27) * 0.4)
    assert fresh_ratio(depth, depth) == pytest.approx(0.1 * 1.5 * 1.6)
    assert fresh_ratio(depth + 37, depth) == pytest.approx(0.1 * (1.5 - 37 / 27) * 1.6)
    # A shallow model keeps nearly the top ratio in every block (no per-depth rescaling).
    assert fresh_ratio(1, 2) == pytest.approx(0.1 * (1.5 - 1 / 27) * 0.4)


@pytest.mark.parametrize(
    "spec", ["nope", "teacache:-1", "teacache:abc", "uniform:0", "uniform:2.5", "none:3"]
)
def test_bad_specs_list_the_valid_ones(spec):
    with pytest.raises(UsageError) as err:
        parse_cache(spec)
    assert spec in str(err.value)
    if spec == "nope":
        for name in METHODS:
            assert name in str(err.value)


def test_parse_defaults_and_values():
    assert parse_cache("teacache") == CacheSpec("teacache", METHODS["teacache"].default)
    assert parse_cache("uniform:4") == CacheSpec("uniform", 4.0)
    assert str(parse_cache("uniform:4")) == "uniform:4"
    assert str(parse_cache("fbcache:0.08")) == "fbcache:0.08"


def test_calibration_file_round_trip(tmp_path, calibration):
    path = tmp_path / "cache-calibration.json"
    save_calibration(calibration, path)
    loaded = load_calibration(path)
    assert loaded.teacache == calibration.teacache
    assert loaded.smoothcache == calibration.smoothcache
    assert loaded.ditfastattn == calibration.ditfastattn


def test_teacache_fit_recovers_a_known_polynomial():
    from vidcli.sampling.cache.calibration import fit_teacache

    coeffs = [3.0, -2.0, 0.5, 1.5, 0.01]
    xs = [i / 50 for i in range(1, 40)]
    pairs = [(x, sum(c * x ** (4 - k) for k, c in enumerate(coeffs))) for x in xs]
    assert fit_teacache(pairs) == pytest.approx(coeffs, rel=1e-6, abs=1e-8)


def test_calibration_round_trips_through_the_recipe(tmp_path, tiny, calibration):
    from vidcli.recipe import dump_recipe, load_recipe
    from vidcli.sampling.cache import find_calibration

    path = tmp_path / "cal.json"
    save_calibration(calibration, path)
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(f'[sample]\ncache = "smoothcache:0.1"\ncache_calibration = "{path}"\n')
    recipe = load_recipe(recipe_file)
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(dump_recipe(recipe))
    again = load_recipe(resolved).sample
    assert (again.cache, again.cache_calibration) == ("smoothcache:0.1", str(path))
    loaded = find_calibration(again.cache_calibration, "")
    assert loaded.to_json() == calibration.to_json()
    # The policies built from the recipe's calibration behave as the in-memory one.
    spec = parse_cache(again.cache)
    a, sa = _sample(tiny, build_policy(spec, loaded, STEPS, T))
    b, sb = _sample(tiny, build_policy(spec, calibration, STEPS, T))
    assert torch.equal(a, b) and sa.kinds == sb.kinds


def test_calibration_beside_the_dit_weights_is_found(tmp_path, calibration):
    from vidcli.sampling.cache import find_calibration
    from vidcli.sampling.cache.calibration import FILENAME

    save_calibration(calibration, tmp_path / FILENAME)
    assert find_calibration("", str(tmp_path)).teacache == calibration.teacache
    assert find_calibration("", str(tmp_path / "model.safetensors")).teacache is not None
    assert find_calibration("", str(tmp_path / "other" / "dit")).teacache is None


def test_uncalibrated_smoothcache_names_the_command():
    with pytest.raises(UsageError, match="no calibration for 14 steps") as err:
        build_policy(parse_cache("smoothcache"), CacheCalibration(), STEPS)
    assert "--calibrate" in (err.value.hint or "")


def test_bundled_demo_ships_teacache_coefficients():
    from vidcli.demo import DEMO_DIR
    from vidcli.sampling.cache.calibration import FILENAME

    shipped = load_calibration(DEMO_DIR / "dit" / FILENAME)
    assert len(shipped.teacache) == 5
    assert {"20", "50"} <= set(shipped.smoothcache) and {"20", "50"} <= set(shipped.ditfastattn)


def test_cli_generate_rejects_bad_cache_with_exit_2():
    from typer.testing import CliRunner

    from vidcli.cli import app

    result = CliRunner().invoke(app, ["generate", "a red circle", "--cache", "teacahe:0.1"])
    assert result.exit_code == 2
    assert "teacache" in result.output and "uniform" in result.output


def test_taylorseer_lite_extrapolates_linearly_between_full_steps(tiny, calibration):
    # K = 2: steps 0-2 full (warm-up), then every other step; the predicted ones add the
    # first-order forecast of the stack residual to their fresh input.
    from vidcli.sampling.cache.taylorseer import TaylorSeerLite

    policy = TaylorSeerLite(2)
    out, stats = _sample(tiny, policy)
    assert stats.kinds[:5] == ["full", "full", "full", "skipped", "full"]
    reference, _ = _sample(tiny, None)
    assert ((out - reference).norm() / reference.norm()).item() < 0.2
