"""`vidcli benchmark --compare-ae --image`: rows' latents and tokens, the resized networks, the
interleaved timings and speedups, and the options it refuses."""

from __future__ import annotations

import json
import statistics

import pytest
from typer.testing import CliRunner

from vidcli.benchmark.compare_ae_image import latent_shape, network_config
from vidcli.cli import app
from vidcli.errors import ShapeError, UsageError
from vidcli.models.dcae_diffusion import DiTConfig, UViTConfig

runner = CliRunner()


def test_latents_of_the_default_rows_at_512px():
    # SD-VAE-f8: 4 x 64 x 64 (1024 tokens at patch 2); DC-AE f32c32: 32 x 16 x 16 (256 at patch
    # 1); DC-AE f64c128: 128 x 8 x 8 (64): 16x fewer tokens than the baseline
    assert latent_shape("sd-vae-f8:2", 512) == ("sd-vae-f8", 2, (4, 64, 64))
    assert latent_shape("dc-ae-f32c32-in-1.0:1", 512) == ("dc-ae-f32c32-in-1.0", 1, (32, 16, 16))
    assert latent_shape("dc-ae-f64c128-in-1.0:1", 512)[2] == (128, 8, 8)
    with pytest.raises(ShapeError, match="needs a multiple of 64"):
        latent_shape("dc-ae-f64c128-in-1.0:1", 480)
    with pytest.raises(UsageError, match="expected PRESET:PATCH"):
        latent_shape("dc-ae-f32t4c128:1", 512)  # a video AE


def test_networks_are_the_released_ones_resized():
    uvit = network_config("uvit-h", (128, 8, 8), 1, None)
    assert isinstance(uvit, UViTConfig)
    assert (uvit.in_channels, uvit.input_size, uvit.patch_size) == (128, 8, 1)
    assert (uvit.hidden_size, uvit.depth, uvit.num_heads) == (1152, 28, 16)
    dit = network_config("dit-xl", (4, 64, 64), 2, 3)
    assert isinstance(dit, DiTConfig) and (dit.depth, dit.patch_size, dit.in_channels) == (3, 2, 4)
    with pytest.raises(UsageError, match="even depth"):
        network_config("uvit-s", (4, 64, 64), 2, 3)


@pytest.mark.parametrize("dit", ["uvit-s", pytest.param("dit-xl", marks=pytest.mark.slow)])
def test_cli_rows_tokens_and_interleaved_speedups(dit: str):
    args = ["benchmark", "--compare-ae", "--image", "--dit", dit, "--dit-blocks", "2"]
    result = runner.invoke(app, [*args, "--resolution", "128", "--repeat", "2", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["rows"]
    assert [r["ae"] for r in rows] == ["sd-vae-f8", "dc-ae-f32c32-in-1.0", "dc-ae-f64c128-in-1.0"]
    # 128 px: 16² latent / patch 2 = 64 tokens; 4²; 2²
    assert [r["tokens"] for r in rows] == [64, 16, 4]
    assert [r["latent_shape"] for r in rows] == [[4, 16, 16], [32, 4, 4], [128, 2, 2]]
    base = rows[0]
    for row in rows:
        assert len(row["train_rounds"]) == len(row["infer_rounds"]) == 2
        for kind in ("train", "infer"):
            ratios = [
                a / b for a, b in zip(base[f"{kind}_rounds"], row[f"{kind}_rounds"], strict=True)
            ]
            assert row[f"speedup_{kind}"] == pytest.approx(statistics.median(ratios))
            assert row[f"{kind}_step_s"] == pytest.approx(statistics.median(row[f"{kind}_rounds"]))
    assert base["speedup_train"] == base["speedup_infer"] == 1.0
    assert (rows[2]["paper_speedup_train"], rows[2]["paper_speedup_infer"]) == (17.9, 19.1)
    assert rows[1]["paper_speedup_train"] is None
    assert payload["env"]["network"].endswith("depth 2")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image"], "--image is a --compare-ae mode"),
        (["--image", "--compare-ae", "--kernels"], "--image is a --compare-ae mode"),
        (
            ["--image", "--compare-ae", "--dit", "mmdit-s"],
            "--dit 'mmdit-s': expected one of uvit-s",
        ),
        (["--image", "--compare-ae", "--dit-blocks", "2,4"], "--dit-blocks '2,4': --image takes"),
        (["--image", "--compare-ae", "--ae", "hunyuan-video-vae:2"], "--image compares image"),
    ],
)
def test_cli_refusals(extra, message):
    result = runner.invoke(app, ["benchmark", *extra])
    assert result.exit_code == 2
    assert message in result.stderr
