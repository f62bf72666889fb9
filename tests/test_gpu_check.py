"""benchmarks/gpu_check.py's steps at tiny shapes on the CPU (`--dry-run`): the script a lent GPU
runs must not meet its first bug there."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402

from vidcli.models.mmdit import DIT_PRESETS  # noqa: E402


def test_streaming_step_times_the_streamed_dit_and_computes_what_the_resident_one_does(tmp_path):
    assert gpu_check.main(["--dry-run", "--only", "streaming", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    result = report["steps"]["streaming"]["result"]
    assert result["max_abs_difference"] == 0.0
    cfg = gpu_check.settings(dry_run=True)["streaming"]
    assert len(result["rounds"]) == cfg["rounds"]
    assert result["streamed_over_resident"] > 0
    _, frames, height, width = cfg["latent"]
    p = DIT_PRESETS[cfg["preset"]].patch_size
    assert result["tokens"] == frames * (height // p) * (width // p)
    assert "streamed_over_resident" in (tmp_path / "gpu-check.md").read_text()


def test_quantize_step_on_the_cpu_times_int8_wo_and_skips_fp8_with_its_refusal(tmp_path):
    assert gpu_check.main(["--dry-run", "--only", "quantize", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    result = report["steps"]["quantize"]["result"]
    cfg = gpu_check.settings(dry_run=True)["quantize"]
    assert set(result["variants"]) == {"none", "int8-wo"}
    assert "needs a CUDA GPU of compute capability 8.9+" in result["quantize_skipped"]["fp8"]
    assert len(result["rounds"]) == cfg["rounds"]
    plain, int8 = result["variants"]["none"], result["variants"]["int8-wo"]
    assert plain["rel_l2_error"] == 0.0 and plain["speedup"] == 1.0
    # int8-wo per row: ~0.5 % on the tiny DiT at fp32 (a wrong scale is off by far more)
    assert 0 < result["int8_wo_rel_l2_error"] < 0.02
    for variant in (plain, int8):
        assert variant["weight_bytes"] == variant["planned_weight_bytes"]
    assert int8["weight_bytes"] < 0.4 * plain["weight_bytes"]  # fp32: 1 B of 4, plus scales
    _, frames, height, width = cfg["latent"]
    p = DIT_PRESETS[cfg["preset"]].patch_size
    assert result["tokens"] == frames * (height // p) * (width // p)
    text = (tmp_path / "gpu-check.md").read_text()
    assert "| int8_wo_speedup |" in text and "- quantize fp8 skipped: --quantize fp8" in text
