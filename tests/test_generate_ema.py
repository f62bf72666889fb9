"""`generate --checkpoint` samples the checkpoint's EMA weights when it has them; `--raw-weights`
samples the trained weights themselves."""

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vidcli import generate as pipeline
from vidcli.cli import app
from vidcli.models import build_autoencoder, build_dit, save_autoencoder, save_dit
from vidcli.models.mmdit.io import FORMAT


def _write_recipe(folder: Path, ae: Path) -> None:
    (folder / "recipe.toml").write_text(
        f"""
[ae]
preset = "dc-ae-tiny"
path = "{ae}"
tiling = false

[dit]
path = "{folder}"

[text]
max_length = 8

[sample]
steps = 2
frames = 8
height = 64
width = 64
fps = 6
"""
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint with model + EMA weights, and a copy whose raw weights are that EMA."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    save_autoencoder(build_autoencoder("dc-ae-tiny"), root / "ae")
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=384, vec_in_dim=384)
    trained = save_dit(dit, root / "step-1")
    g = torch.Generator().manual_seed(1)
    ema = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in dit.state_dict().items()}
    save_file(ema, str(trained / "ema.safetensors"))
    _write_recipe(trained, root / "ae")
    as_model = root / "ema-as-model"
    shutil.copytree(trained, as_model)
    (as_model / "ema.safetensors").unlink()
    save_file(ema, str(as_model / "model.safetensors"), metadata={"format": FORMAT})
    _write_recipe(as_model, root / "ae")
    return trained, as_model


def test_pipeline_loads_ema_unless_raw(checkpoints):
    trained, _ = checkpoints
    recipe = pipeline.load_generate_recipe(None, trained, [])
    ema = load_file(str(trained / "ema.safetensors"))
    raw = load_file(str(trained / "model.safetensors"))
    for use_ema, expected in ((True, ema), (False, raw)):
        state = pipeline.load_pipeline(recipe, ema=use_ema).dit.state_dict()
        assert set(state) == set(expected)
        for key, value in expected.items():
            assert torch.equal(state[key].cpu(), value.float()), (use_ema, key)


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_generate_checkpoint_samples_ema_and_raw_on_request(checkpoints, tmp_path):
    trained, as_model = checkpoints
    outputs = {}
    for name, folder, extra in (
        ("default", trained, []),
        ("raw", trained, ["--raw-weights"]),
        ("ema-as-model", as_model, []),
    ):
        out = tmp_path / f"{name}.mp4"
        args = ["generate", "a red circle", "--checkpoint", str(folder), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--seed", "3", *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = _frames(out)
    assert np.array_equal(outputs["default"], outputs["ema-as-model"])
    assert not np.array_equal(outputs["default"], outputs["raw"])
