"""`[sample]` solver / LPL / TDTM / sparse-attention keys: CLI -> recipe -> loop and attention."""

from __future__ import annotations

import pytest
import tomllib
import torch
from typer.testing import CliRunner

from vidcli import flow
from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.recipe import SampleSection
from vidcli.sampling.acceleration import attention_config, leap_config, sampling_acceleration


def test_generate_options_become_sample_keys():
    result = CliRunner().invoke(
        app,
        ["generate", "x", "--solver", "rf2", "--lpl", "--tdtm-steps", "2",
         "--sparse-attention", "window", "--set", "sample.sparse_window=[0,2,2]", "--print-recipe"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sample = tomllib.loads(result.stdout)["sample"]
    assert (sample["solver"], sample["lpl"], sample["tdtm_steps"]) == ("rf2", True, 2)
    assert (sample["sparse_attention"], sample["sparse_window"]) == ("window", [0, 2, 2])


def test_defaults_are_off_and_bad_values_are_usage_errors():
    default = SampleSection()
    assert attention_config(default) is None and leap_config(default) is None
    assert default.solver == "euler"
    result = CliRunner().invoke(app, ["generate", "x", "--solver", "rk4", "--print-recipe"])
    assert result.exit_code == 2 and "euler" in result.output and "rf2" in result.output
    bad = SampleSection(sparse_attention="sta", sparse_tile=[2, 4])
    with pytest.raises(UsageError, match=r"\[sample\] sparse_tile = \[2, 4\]: expected 3 integers"):
        attention_config(bad)


@pytest.fixture(scope="module")
def demo_dit():
    from vidcli.demo import DEMO_DIR
    from vidcli.models.mmdit.io import load_dit

    return load_dit(str(DEMO_DIR / "dit")).float().eval()


def test_sampling_acceleration_routes_the_dits_attention(demo_dit):
    sample = SampleSection(steps=4, tdtm_steps=2, sparse_attention="sta", sparse_tile=[1, 2, 2])
    g = torch.Generator().manual_seed(0)
    txt, y = 0.1 * torch.randn(1, 16, 384, generator=g), 0.1 * torch.randn(1, 384, generator=g)
    noise = torch.randn(1, 16, 4, 8, 8, generator=g)  # patch 2: a 4 x 4 x 4 token grid
    schedule = flow.inference_schedule(sample.steps, 16, 4)
    layers = len(demo_dit.double_blocks) + len(demo_dit.single_blocks)
    with torch.no_grad():
        with sampling_acceleration(sample, (4, 4, 4)) as accel:
            out = flow.sample_i2v(demo_dit.forward_video, noise, schedule, txt, y, txt, y,
                                  solver=accel.solver, hooks=accel.hooks)  # fmt: skip
        plain = flow.sample_i2v(demo_dit.forward_video, noise, schedule, txt, y, txt, y)
    # 2 merged steps; then the dispatcher keeps 80 tokens dense (the sparse path is slower there)
    assert accel.plan.choices == {"merged": 2 * layers, "dense": 2 * layers}
    assert accel.plan.last_choice.path == "dense"
    # merging changes the result, a little: the same video, not another one
    rel = ((out - plain).norm() / plain.norm()).item()
    assert 1e-4 < rel < 0.3


def test_benchmark_sampler_rows_count_their_real_evaluations():
    from vidcli.benchmark import caching
    from vidcli.benchmark.sampler_variants import sampler_variants

    rows = {v.name: v for v in sampler_variants(50)}
    assert rows["rf2:25"].sample == {"solver": "rf2", "steps": 25}
    assert rows["lpl:0.47"].sample == {"lpl": True, "lpl_start": 0.47}
    assert rows["tdtm:25"].sample == {"tdtm_steps": 25}
    assert caching.default_variants(50, ["uniform:2"])[-1].name == "uniform:6"  # opt-in only
    # an uncached row reports the DiT calls it made (a leap after 28 of 50 steps)
    from vidcli.benchmark.caching_cost import CostMeter
    from vidcli.models.mmdit.config import MMDiTConfig

    meter = CostMeter(lambda *args: None, MMDiTConfig(), None, (2, 4, 4), "cpu")
    for step in range(28):
        meter.before_evaluation(flow.StepInfo(step, 50, 1.0, False, step, ("cond",), 1))
        meter(torch.zeros(1), torch.zeros(1), torch.zeros(1, 5, 4))
    video = torch.zeros(1, 3, 2, 16, 16)
    timings = {"dit_cpu": 1.0, "dit_wall": 1.0, "cpu_total": 2.0, "device": "cpu",
               "dit_calls": 28}  # fmt: skip
    row = caching._row(rows["lpl:0.47"], 50, video, video, timings, meter, (2.0, 3.0, 2.0))
    assert (row.full_evals, row.blocks_computed) == (28, pytest.approx(0.56))


def test_bad_sparse_settings_fail_before_models_load(tmp_path, monkeypatch):
    from vidcli import generate

    monkeypatch.setattr(generate, "load_pipeline", lambda *a, **k: pytest.fail("loaded models"))
    result = CliRunner().invoke(
        app, ["generate", "x", "--sparse-attention", "sta", "--set", "sample.sparse_tile=[2,4]",
              "--out", str(tmp_path / "x.mp4")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "[sample] sparse_tile = [2, 4]: expected 3 integers >= 1" in result.output
