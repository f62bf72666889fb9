"""Quantized inference (`[sample] quantize`, `generate --quantize`): int8-wo samples the demo close
to bf16, the memory plan counts the quantized bytes, and what cannot run exits 2 in one line."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.generate import load_generate_recipe
from vidcli.placement import Placement
from vidcli.plans.generate import plan_generate
from vidcli.plans.sizes import GB, meta_dit
from vidcli.quantize import quantized_bytes, quantizes
from vidcli.sampling.compatibility import Setting, check
from vidcli.sampling.phases import sample_videos
from vidcli.sampling.pipeline import load_pipeline

SMALL = ["sample.steps=3", "sample.frames=4"]
PSNR_FLOOR_DB = 40.0
"""int8-wo against bf16 on the demo: 47 dB at 30 steps (docs/benchmarks.md); 3 steps here."""


def psnr_db(video: torch.Tensor, reference: torch.Tensor) -> float:
    mse = (video - reference).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(2.0**2 / mse)  # videos in [-1, 1]


def one_line_exit_2(args: list[str], tmp_path: Path) -> str:
    out = tmp_path / "x.png"
    result = CliRunner().invoke(app, ["generate", "a kite", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert not out.exists()
    return lines[0]


def test_int8_weight_only_samples_the_demo_close_to_bf16():
    pytest.importorskip("torchao")
    videos = {}
    for quantize in ("none", "int8-wo"):
        recipe = load_generate_recipe(None, None, [*SMALL, f"sample.quantize={quantize}"])
        pipe = load_pipeline(recipe, Placement(torch.device("cpu"), torch.bfloat16), ema=False)
        linears = [m for m in pipe.dit.modules() if isinstance(m, torch.nn.Linear)]
        assert all(
            (type(m.weight).__name__ == "Int8Tensor") == quantizes(m, quantize) for m in linears
        )
        size = (4, recipe.sample.height, recipe.sample.width)
        videos[quantize] = sample_videos(
            pipe, recipe.sample, ["a red circle moving right"], [0], size
        )
    assert not torch.equal(videos["int8-wo"], videos["none"])
    assert psnr_db(videos["int8-wo"], videos["none"]) >= PSNR_FLOOR_DB


def test_generate_with_int8_writes_the_video(tmp_path):
    pytest.importorskip("torchao")
    out = tmp_path / "kite.png"
    args = ["generate", "a kite", "--quantize", "int8-wo", "--steps", "2", "--frames", "4"]
    result = CliRunner().invoke(app, [*args, "--dtype", "bf16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_plan_counts_the_quantized_weights():
    """The plan's DiT bytes are what torchao holds: int8 weights with an fp32 scale and an int8
    zero point per row, the other parameters in the compute dtype."""
    pytest.importorskip("torchao")
    recipe = load_generate_recipe(None, None, ["sample.quantize=int8-wo"])
    pipe = load_pipeline(recipe, Placement(torch.device("cpu"), torch.bfloat16), ema=False)
    held = 0
    for tensor in pipe.dit.parameters():
        names = getattr(tensor, "__tensor_flatten__", None)
        parts = [getattr(tensor, n) for n in names()[0]] if names else [tensor]
        held += sum(p.numel() * p.element_size() for p in parts)
    plan = plan_generate(recipe, torch.device("cuda"), torch.bfloat16, 80.0)
    (dit,) = [c for c in plan.components if c.name == "dit"]
    assert dit.weight_gb * GB == pytest.approx(held, rel=1e-6)
    plain = plan_generate(
        load_generate_recipe(None, None, []), torch.device("cuda"), torch.bfloat16, 80.0
    )
    (bf16,) = [c for c in plain.components if c.name == "dit"]
    assert dit.weight_gb < 0.6 * bf16.weight_gb
    assert plan.offload == "none" and "DiT linears int8-wo" in plan.stdout_lines()[0]


def test_quantized_bytes_on_meta_without_torchao():
    recipe = load_generate_recipe(None, None, [])
    dit = meta_dit(recipe.dit, 16, recipe.text)
    total = sum(p.numel() for p in dit.parameters())
    assert quantized_bytes(dit, "none", 2) == 2 * total
    for mode, per_row in (("int8-wo", 5), ("fp8", 4)):
        linears = [m for m in dit.modules() if quantizes(m, mode)]
        rows = sum(m.out_features for m in linears)
        weights = sum(m.weight.numel() for m in linears)
        expected = 2 * (total - weights) + weights + per_row * rows
        assert quantized_bytes(dit, mode, 2) == expected
    # int8-wo keeps the 68-wide condition embedder (vidcli.quantize.INT8_PACK_K)
    assert not quantizes(dit.cond_in, "int8-wo") and quantizes(dit.cond_in, "fp8")


def test_quantized_dit_is_not_moved_again():
    """`Placement.enter` leaves a model already on the device alone: torchao's weights cannot be
    swapped by `module.to` under inference mode."""
    pytest.importorskip("torchao")
    from vidcli.quantize import quantize_linears

    placement = Placement(torch.device("cpu"), torch.bfloat16)
    model = quantize_linears(torch.nn.Sequential(torch.nn.Linear(16, 8)).bfloat16(), "int8-wo")
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="swap"):
            model.to("cpu")
        with placement.on_device(dit=model):
            assert model(torch.ones(1, 16, dtype=torch.bfloat16)).shape == (1, 8)


def test_fp8_on_the_cpu_exits_2(tmp_path):
    line = one_line_exit_2(["--quantize", "fp8", "--device", "cpu"], tmp_path)
    assert "--quantize fp8" in line and "8.9" in line and "int8-wo" in line


def test_fp8_below_sm_89_is_refused(monkeypatch):
    from vidcli.quantize import check_quantize

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(UsageError, match=r"capability 8.9\+ and cuda:0 has 8.0"):
        check_quantize("fp8", torch.device("cuda:0"))


def test_missing_torchao_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # import torchao raises ImportError
    line = one_line_exit_2(["--quantize", "int8-wo", "--device", "cpu"], tmp_path)
    assert 'pip install -e ".[quant]"' in line


def test_unknown_mode_exits_2(tmp_path):
    line = one_line_exit_2(["--quantize", "int4"], tmp_path)
    assert "int4" in line and "int8-wo" in line


@pytest.mark.parametrize("offload", ["model", "blocks"])
@pytest.mark.parametrize("quantize", ["int8-wo", "fp8"])
def test_quantize_refuses_offload(quantize, offload):
    with pytest.raises(UsageError, match=f"--quantize {quantize} and offload {offload}"):
        check(Setting(quantize=quantize, offload=offload))
    check(Setting(quantize=quantize))
