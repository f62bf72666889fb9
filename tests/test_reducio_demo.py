"""The Reducio demo (recipes/reducio-demo.toml): text -> demo MMDiT image (CFG) -> motion latent
-> Reducio-VAE decode, offline; and `python -m vidcli.demo reducio-ae` exporting a train-ae
Reducio checkpoint's EMA weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vidcli.demo as demo
from vidcli.data.synthetic import make_shapes_dataset, measure_shapes_clip
from vidcli.media import read_frames, to_uint8_frames
from vidcli.metrics import psnr
from vidcli.models.content import reconstruct
from vidcli.models.reducio import build_reducio, load_reducio, save_reducio

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "reducio-demo.toml"


@pytest.mark.slow
@pytest.mark.skipif(
    not (demo.REDUCIO_DEMO_DIR / "dit" / "model.safetensors").is_file(),
    reason="the Reducio demo weights are not in this checkout",
)
def test_reducio_demo_recipe_generates_a_finite_mp4_offline(tmp_path):
    out = tmp_path / "clip.mp4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vidcli", "generate", "--recipe", str(RECIPE)]
    cmd += ["a red circle moving right", "--steps", "2", "--set", "t2i.steps=2"]
    cmd += ["--out", str(out)]
    # Recipe weight paths are relative to the repository root, as for the other recipes.
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    frames = read_frames(out)
    assert frames.shape == (16, 32, 32, 3)
    assert np.isfinite(frames.astype(np.float32)).all()


@pytest.mark.skipif(
    not (demo.REDUCIO_DEMO_DIR / "ae" / "model.safetensors").is_file(),
    reason="the Reducio demo weights are not in this checkout",
)
def test_the_shipped_demo_ae_keeps_colour_and_direction_of_held_out_clips(tmp_path):
    # Clips the AE never saw (its training set is seed 0), read at 32 px as training reads them.
    listing = make_shapes_dataset(tmp_path, 20, frames=16, seed=1)
    rows = [json.loads(line) for line in listing.read_text().splitlines()]
    clips = [read_frames(tmp_path / r["path"], num_frames=16, size=(32, 32)) for r in rows]
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    ae = load_reducio(demo.REDUCIO_DEMO_DIR / "ae")
    assert ae.latent_shape(16, 32, 32) == (16, 4, 2, 2)
    with torch.no_grad():
        recon = reconstruct(ae, video).clamp(-1, 1)
    got = [measure_shapes_clip(to_uint8_frames(v)) for v in recon]
    kept = [g == (r["colour"], r["direction"]) for g, r in zip(got, rows, strict=True)]
    # Measured on 60 such clips (benchmarks/reducio_ae_adherence.py): 100 % colour and direction.
    assert sum(kept) >= 18, list(zip(got, [r["caption"] for r in rows], strict=True))
    assert psnr(recon, video, 2.0) > 18.0


def _reducio_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = demo_config()
    model = build_reducio(config)
    ckpt = save_reducio(model, tmp_path / "ckpt")
    # train-ae's EMA holds the parameters only: no fixed pos_embed tables.
    ema = {k: v + 1.0 for k, v in model.state_dict().items() if not k.endswith("pos_embed")}
    save_file({k: v.contiguous() for k, v in ema.items()}, str(ckpt / "ema.safetensors"))
    ema.update({k: v for k, v in model.state_dict().items() if k.endswith("pos_embed")})
    return ckpt, ema


def demo_config():
    """The reducio-demo-ae recipe's Reducio config."""
    from vidcli.models.reducio.loading import resolve_config
    from vidcli.recipe import load_recipe

    ae = load_recipe(ROOT / "recipes" / "reducio-demo-ae.toml").ae
    return resolve_config(ae.preset, **ae.overrides)


def test_reducio_ae_export_writes_the_ema_weights(tmp_path):
    ckpt, ema = _reducio_checkpoint(tmp_path)
    assert demo.main(["reducio-ae", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    exported = load_reducio(tmp_path / "export")
    assert exported.config == demo_config()
    for key, value in exported.state_dict().items():
        torch.testing.assert_close(value, ema[key], rtol=0, atol=0)


def test_reducio_overwrite_package_goes_to_the_reducio_demo_folder(tmp_path, monkeypatch):
    package = tmp_path / "reducio-demo"
    monkeypatch.setattr(demo, "REDUCIO_DEMO_DIR", package)
    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path / "demo")
    ckpt, _ = _reducio_checkpoint(tmp_path)
    assert demo.main(["reducio-ae", str(ckpt), "--overwrite-package"]) == 0
    assert (package / "ae" / "model.safetensors").is_file()
    assert not (tmp_path / "demo").exists()
