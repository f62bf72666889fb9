"""`vidcli benchmark --caching`: rows, the comparison with the uniform control, the files."""

from __future__ import annotations

import csv

import pytest

from vidcli.benchmark import caching
from vidcli.errors import UsageError


def _row(variant, family, blocks, psnr, speedup=2.0):
    return caching.CachingRow(
        variant=variant, family=family, steps=10, dit_s=1.0, total_s=2.0, dit_speedup=speedup,
        e2e_speedup=1.5, dit_wall_speedup=1.8, full_evals=5, partial_evals=0, skipped_evals=5,
        blocks_computed=blocks,
        psnr_mean=psnr, psnr_min=psnr - 1, psnr_max=psnr + 1, ssim_mean=0.9,
    )  # fmt: skip


def test_vs_uniform_interpolates_the_control_at_equal_cost():
    rows = [
        _row("uniform:2", "uniform", 0.5, 40.0),
        _row("uniform:4", "uniform", 0.25, 30.0),
        _row("teacache:0.2", "teacache", 0.375, 37.5),
        _row("fbcache:0.5", "fbcache", 0.1, 20.0),  # cheaper than any control point
    ]
    caching._compare_with_uniform(rows)
    assert rows[2].vs_uniform_db == pytest.approx(37.5 - 35.0)
    assert rows[3].vs_uniform_db is None
    assert rows[0].vs_uniform_db is None


def test_default_rows_always_include_the_control_and_registered_variants():
    variants = caching.default_variants(20, ["teacache:0.3"])
    names = [v.name for v in variants]
    assert names[:5] == ["uniform:2", "uniform:3", "uniform:4", "uniform:5", "uniform:6"]
    assert names[5:] == ["teacache:0.3"]
    full = caching.default_variants(20, [])
    for method in caching.DEFAULT_GRID:
        assert any(v.family == method for v in full)


def test_register_variants_adds_rows(monkeypatch):
    monkeypatch.setattr(caching, "_EXTRA_FACTORIES", [])
    caching.register_variants(
        lambda steps: [caching.SamplingVariant("rf2", "solver", sample={"steps": steps // 2})]
    )
    extra = caching.default_variants(20, ["toca:4"])[-1]
    assert (extra.name, extra.family, extra.sample) == ("rf2", "solver", {"steps": 10})


def test_bad_method_rows_are_usage_errors():
    with pytest.raises(UsageError, match="unknown caching method"):
        caching.default_variants(20, ["magic:1"])


def test_csv_and_plot_files(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("uniform:2", "uniform", 0.5, 40.0, 1.9), _row("toca:3", "toca", 0.4, 38.0, 2.2)]
    path = caching.write_csv(rows, tmp_path / "c.csv")
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["variant"] for r in read] == ["uniform:2", "toca:3"]
    assert float(read[1]["psnr_mean"]) == 38.0
    env = {"model": "demo", "steps": 10, "prompts": ["a"], "device": "cpu"}
    png = caching.write_plot(rows, env, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_run_on_a_tiny_model_end_to_end(tmp_path):
    import json

    import test_generate

    weights = test_generate.tiny_weights.__wrapped__(_Factory(tmp_path))
    recipe = test_generate.recipe_file(tmp_path, weights)
    cal = tmp_path / "cal.json"
    options = caching.CachingOptions(
        recipe=recipe,
        steps=6,
        methods=["teacache:0.3", "smoothcache:0.2"],
        prompts=["a red circle moving right", "a blue square moving down"],
        calibrate=True,
        calibration=cal,
        output=tmp_path / "r.json",
        csv=tmp_path / "r.csv",
    )
    result = caching.run(options)
    assert json.loads(cal.read_text())["smoothcache"].keys() == {"6"}
    names = [r.variant for r in result.rows]
    assert names == [f"uniform:{k}" for k in (2, 3, 4, 5, 6)] + ["teacache:0.3", "smoothcache:0.2"]
    by_name = {r.variant: r for r in result.rows}
    # uniform:2 at 6 steps computes steps 0, 2, 4, 5; uniform:6 only 0 and 5.
    assert (by_name["uniform:2"].full_evals, by_name["uniform:2"].skipped_evals) == (4, 2)
    assert by_name["uniform:6"].full_evals == 2
    assert by_name["uniform:6"].blocks_computed == pytest.approx(2 / 6)
    for r in result.rows:
        assert r.full_evals + r.partial_evals + r.skipped_evals == 6
        assert 0 < r.ssim_mean <= 1 and r.dit_speedup > 0
    saved = json.loads((tmp_path / "r.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == names
    assert len(saved["env"]["baseline_dit_s"]) == 3  # before, after row 6, at the end


class _Factory:
    """The bit of pytest's tmp_path_factory that the tiny_weights fixture uses."""

    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        path = self.root / name
        path.mkdir()
        return path


def test_an_output_that_is_stdout_is_refused_before_sampling(tmp_path, monkeypatch):
    """`--output r.json --json > r.json` would lose the printed result: refused up front."""
    import os

    from vidcli import generate

    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **k: pytest.fail("loaded models"))
    target = tmp_path / "r.json"
    saved = os.dup(1)
    try:
        with target.open("w") as redirected:
            os.dup2(redirected.fileno(), 1)
            with pytest.raises(UsageError, match="stdout is redirected"):
                caching.run(caching.CachingOptions(steps=4, output=target))
    finally:
        os.dup2(saved, 1)
        os.close(saved)
