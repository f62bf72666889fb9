"""compare-ae's attention share (against its closed form) and `--compile` rows."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from vidcli.benchmark.compare_ae import attention_share
from vidcli.cli import app
from vidcli.models.mmdit import DIT_PRESETS

TINY = ["--dit", "mmdit-tiny", "--resolution", "64", "--frames", "8", "--repeat", "1"]
TINY_AES = ["--ae", "dc-ae-tiny:2", "--ae", "dc-ae-tiny:1"]


@pytest.mark.parametrize("preset", ["opensora-v2-11b", "mmdit-s", "mmdit-tiny"])
@pytest.mark.parametrize("tokens", [(448, 32), (4032, 512), (133_056, 512)])
def test_attention_share_is_t_over_6d_plus_t(preset, tokens):
    # At mlp_ratio 4 a double-block stream and a single block both hold 12·D² matmul weights, so
    # per block and token the linears cost 2·12·D² and attention 4·D·T: share = T / (6·D + T),
    # whatever the block counts (a --dit-blocks cut keeps it).
    config = DIT_PRESETS[preset]
    assert config.mlp_ratio == 4.0
    total = sum(tokens)
    expected = total / (6 * config.hidden_size + total)
    assert attention_share(config, *tokens) == pytest.approx(expected, rel=1e-12)
    cut = dataclasses.replace(config, depth=1, depth_single_blocks=0)
    assert attention_share(cut, *tokens) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compare-ae", "--compile-mode", "blocks"], "--compile-mode blocks needs --compile"),
        (["--attention", "--compile"], "--compile compiles the --compare-ae rows' DiT"),
        (["--compare-ae", "--compile", "--compile-mode", "off"], "--compile-mode 'off': expected"),
    ],
)
def test_compile_options_are_checked(args, message):
    result = CliRunner().invoke(app, ["benchmark", *args, *TINY])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow  # each row's worker compiles its DiT's train and denoising graphs (inductor)
def test_compare_ae_compiled_rows_report_compile_time():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the rows' worker processes inherit it
    try:
        args = ["benchmark", "--compare-ae", *TINY_AES, *TINY, "--steps", "2", "--json"]
        result = CliRunner().invoke(app, [*args, "--compile", "--compile-mode", "blocks"])
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["env"]["compile"] == "blocks"
    for row in data["rows"]:
        assert row["compile_s"] > 0 and row["train_step_s"] > 0 and row["infer_step_s"] > 0
        # T / (6·D + T): the 64-wide tiny DiT spends a larger share on attention than the 11B.
        assert 0 < row["attention_share_11b"] < row["attention_share"] < 1
