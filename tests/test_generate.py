"""`vidcli generate` end to end on tiny random models of the real classes (not quality)."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
from tiny_models import save_tiny_t5_clip
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.models import build_autoencoder, build_dit, save_autoencoder, save_dit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny DC-AE (32x spatial, 4x time, 8 channels) and a matching tiny MMDiT, saved."""
    root = tmp_path_factory.mktemp("weights")
    ae = build_autoencoder("dc-ae-tiny")
    save_autoencoder(ae, root / "ae")
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=384, vec_in_dim=384)
    save_dit(dit, root / "dit")
    return root


def recipe_file(tmp_path: Path, weights: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
[ae]
preset = "dc-ae-tiny"
path = "{weights / "ae"}"
tiling = false

[dit]
path = "{weights / "dit"}"

[text]
max_length = 8

[sample]
steps = 3
frames = 8
height = 64
width = 64
fps = 6
{extra}
"""
    )
    return path


def decode(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, float(stream.average_rate)


def generate(*args: str) -> object:
    return CliRunner().invoke(app, ["generate", *args])


def test_writes_a_playable_mp4_with_sidecar(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "clip.mp4"
    result = generate("a red circle moving right", "--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    frames, fps = decode(out)
    assert frames.shape == (8, 64, 64, 3) and fps == 6
    sidecar = json.loads(out.with_name("clip.mp4.json").read_text())
    assert sidecar["prompt"] == "a red circle moving right" and sidecar["seed"] == 0
    assert "[sample]" in sidecar["recipe"] and sidecar["timings_s"]["sample"] > 0


def test_same_seed_same_frames_other_seed_other_frames(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    paths = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        out = tmp_path / f"{name}.png"
        args = ["a blue square moving up", "--recipe", str(recipe), "--seed", seed]
        result = generate(*args, "--out", str(out), "--format", "png")
        assert result.exit_code == 0, result.output
        paths.append(out)
    a, b, c = (sorted(p.glob("*.png")) for p in paths)
    assert [f.read_bytes() for f in a] == [f.read_bytes() for f in b]
    assert [f.read_bytes() for f in a] != [f.read_bytes() for f in c]


def test_same_seed_same_mp4_bytes(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    outs = [tmp_path / "one.mp4", tmp_path / "two.mp4"]
    for out in outs:
        result = generate("a green circle moving down", "--recipe", str(recipe), "--out", str(out))
        assert result.exit_code == 0, result.output
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_refuses_to_overwrite_and_bad_sizes_exit_2(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "x.mp4"
    out.write_bytes(b"keep me")
    result = generate("p", "--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"

    result = generate("p", "--recipe", str(recipe), "--frames", "5", "--out", str(tmp_path / "y"))
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "multiple of 4" in errors[0] and "--snap" in errors[0]

    result = generate("p", "--recipe", str(recipe), "--height", "48", "--out", str(tmp_path / "z"))
    assert result.exit_code == 2 and "multiples of 32" in result.stderr


def test_snap_rounds_to_a_valid_size(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "snapped.mp4"
    args = ["p", "--recipe", str(recipe), "--frames", "7", "--height", "70", "--snap"]
    result = generate(*args, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    video = json.loads(result.stdout)["videos"][0]
    assert (video["frames"], video["height"], video["width"]) == (8, 64, 64)
    assert decode(out)[0].shape == (8, 64, 64, 3)


def test_several_prompts_go_to_a_folder(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a white triangle moving left\n\na green circle moving down\n")
    args = ["a yellow square moving up", "--prompts-file", str(prompts), "--recipe", str(recipe)]
    result = generate(
        *args, "--out", str(tmp_path / "many"), "--batch-size", "2", "--format", "gif"
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.split()
    assert len(lines) == 3 and all(line.endswith(".gif") and Path(line).is_file() for line in lines)


def test_opensora_v2_hcae_recipe_runs_with_tiny_weights_and_tiles(
    tmp_path, tiny_weights, monkeypatch
):
    """The full-scale recipe, with tiny random models of the same classes and tiled decode."""
    from vidcli.models.dcae import model as dcae_model

    tiled_calls = []
    real_tiled_decode = dcae_model.tiled_decode

    def counting_tiled_decode(*args, **kwargs):
        tiled_calls.append(args[-1])
        return real_tiled_decode(*args, **kwargs)

    monkeypatch.setattr(dcae_model, "tiled_decode", counting_tiled_decode)
    save_tiny_t5_clip(tmp_path / "text")
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=32, vec_in_dim=24)
    save_dit(dit, tmp_path / "dit")
    out = tmp_path / "hcae.mp4"
    sets = {
        "ae.path": str(tiny_weights / "ae"),
        "ae.spatial_tile": 64,
        "ae.temporal_tile": 8,
        "dit.path": str(tmp_path / "dit"),
        "text.t5_path": str(tmp_path / "text" / "t5"),
        "text.clip_path": str(tmp_path / "text" / "clip"),
        "text.max_length": 16,
        "sample.steps": 2,
        "sample.frames": 16,
        "sample.height": 64,
        "sample.width": 128,
        # The Flux stage of this recipe runs in tests/test_released_pipeline.py.
        "t2i.enabled": False,
    }
    args = ["a red kite over the sea", "--recipe", str(REPO / "recipes/opensora-v2-hcae.toml")]
    for key, value in sets.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    result = generate(*args, "--out", str(out), "--offload")
    assert result.exit_code == 0, result.output
    assert decode(out)[0].shape == (16, 64, 128, 3)
    assert len(tiled_calls) == 1 and tiled_calls[0].spatial_tile == 64


def test_json_redirected_to_the_sidecar_name_is_refused(tmp_path, tiny_weights):
    """`--out clip.mp4 --json > clip.mp4.json`: the shell opens the sidecar's name for stdout
    first; writing the sidecar would replace it and lose the JSON, so generate refuses, even
    with --overwrite, before sampling."""
    import os
    import subprocess
    import sys

    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "clip.mp4"
    command = [sys.executable, "-m", "vidcli", "generate", "a red circle moving right",
               "--recipe", str(recipe), "--out", str(out), "--json", "--overwrite"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with out.with_name("clip.mp4.json").open("w") as stdout:
        run = subprocess.run(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env)
    assert run.returncode == 2, run.stderr
    assert "clip.mp4.json is the file stdout is redirected to" in run.stderr
    assert not out.exists()


def test_an_existing_sidecar_needs_overwrite(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "clip.mp4"
    out.with_name("clip.mp4.json").write_text("notes\n")
    result = generate("a red circle", "--recipe", str(recipe), "--out", str(out))
    assert result.exit_code == 2 and "clip.mp4.json already exists" in result.stderr
    assert out.with_name("clip.mp4.json").read_text() == "notes\n" and not out.exists()
