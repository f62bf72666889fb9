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
