"""`vidcli generate --cache` / `[sample] cache` on tiny random models: the result JSON counts
evaluations, "always compute" writes the uncached video, bad specs exit 2."""

import json

import pytest
import test_generate
from test_generate import decode, generate, recipe_file

from vidcli.sampling.cache import METHODS

tiny_weights = test_generate.tiny_weights  # the module-scoped fixture, shared


def _run(tmp_path, weights, name, *extra, recipe_extra=""):
    recipe = recipe_file(tmp_path, weights, "steps = 14\n" + recipe_extra)
    recipe.write_text(recipe.read_text().replace("steps = 3\n", ""))
    out = tmp_path / f"{name}.mp4"
    result = generate("a red circle", "--recipe", str(recipe), "--out", str(out), "--json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def test_cache_flag_reports_evaluations(tmp_path, tiny_weights):
    payload, _ = _run(tmp_path, tiny_weights, "u", "--cache", "uniform:4")
    assert (payload["cache"], payload["cache_value"]) == ("uniform", 4.0)
    # Steps 0, 4, 8, 12 and the last (13) are computed; the other 9 reuse the output.
    assert (payload["full_evals"], payload["partial_evals"], payload["skipped_evals"]) == (5, 0, 9)


@pytest.mark.slow
def test_recipe_cache_key_and_uncached_default(tmp_path, tiny_weights):
    plain, plain_out = _run(tmp_path, tiny_weights, "plain")
    assert plain["cache"] == "none" and plain["full_evals"] is None
    for name in ("teacache", "toca"):
        value = 1 if METHODS[name].integer else 0
        cached, out = _run(tmp_path, tiny_weights, name, recipe_extra=f'cache = "{name}:{value}"')
        assert cached["cache"] == name and cached["full_evals"] == 14
        assert (decode(out)[0] == decode(plain_out)[0]).all()


def test_bad_recipe_cache_exits_2(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights, 'cache = "fastcache:0.1"')
    result = generate("a red circle", "--recipe", str(recipe), "--out", str(tmp_path / "x.mp4"))
    assert result.exit_code == 2
    assert "[sample] cache" in result.output and "taylorseer" in result.output


@pytest.mark.parametrize("spec", ["smoothcache", "ditfastattn"])
def test_calibrated_methods_without_calibration_exit_2(tmp_path, tiny_weights, spec):
    recipe = recipe_file(tmp_path, tiny_weights)
    result = generate(
        "a red circle", "--recipe", str(recipe), "--out", str(tmp_path / "x.mp4"), "--cache", spec
    )
    assert result.exit_code == 2
    assert "no calibration for 3 steps" in result.output
