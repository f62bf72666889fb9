"""A DiT on Reducio motion latents, conditioned on the content frame's latent: prepare-data
--encode -> train-dit -> generate --image, each through the CLI, and the refusals on the way."""

import json
import subprocess
import sys

import numpy as np
import pytest
from tiny_models import micro_reducio
from tiny_runs import REPO, subprocess_env

from vidcli.models.reducio import save_reducio

# 4-frame clips, ×2 in time and space, 4 latent channels (as tests/test_content_frames.py).
MICRO = (
    "{ embed_dim = 4, ddconfig = { ch = 32, ch_in = 32, ch_mult = [1, 1], ch_fuse = [-1, 0], "
    "num_res_blocks = 1, temp_res = 4, f_t = 1, z_channels = 4 }, ddconfig_2d = { ch = 32, "
    "ch_mult = [1, 1], num_res_blocks = 1 } }"
)


def vidcli(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "vidcli", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    assert done.returncode == code, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def micro_recipe(tmp_path_factory):
    """recipes/reducio-dit.toml on a saved micro Reducio-VAE, 4-frame 16 px clips, a 2-block DiT."""
    root = tmp_path_factory.mktemp("reducio-dit")
    save_reducio(micro_reducio(), root / "vae")
    recipe = root / "micro.toml"
    recipe.write_text(
        f"include = {json.dumps(str(REPO / 'recipes' / 'reducio-dit.toml'))}\n"
        f"[ae]\npath = {json.dumps(str(root / 'vae'))}\noverrides = {MICRO}\n"
        '[dit]\npreset = "mmdit-tiny"\noverrides = { cond_embed = true, depth = 1, '
        "depth_single_blocks = 1 }\n"
        f'[data]\nsource = "synthetic:shapes:4"\ncache_dir = {json.dumps(str(root / "cache"))}\n'
        "num_frames = 4\nheight = 16\nwidth = 16\n"
        f"[train]\noutput = {json.dumps(str(root / 'run'))}\nmax_steps = 3\nbatch_size = 2\n"
        "log_every = 1\nckpt_every = 3\n"
        "[text]\nmax_length = 8\n"
        "[sample]\nsteps = 2\nframes = 4\nheight = 16\nwidth = 16\n"
    )
    return recipe


def test_encode_train_and_generate_with_the_content_frame(micro_recipe, tmp_path):
    latents = tmp_path / "latents"
    vidcli("prepare-data", "--encode", str(micro_recipe), "--out", str(latents))
    vidcli("train-dit", str(micro_recipe), "--set", f"data.latents={json.dumps(str(latents))}")
    run = micro_recipe.parent / "run"
    checkpoint = run / "checkpoints" / "latest"
    made = json.loads((checkpoint / "latents.json").read_text())
    assert made["ae"]["content_frame"]["index"] == 1  # frame (4 - 1) // 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]

    from vidcli.media import write_image

    frame = tmp_path / "frame.png"
    write_image(frame, np.full((16, 16, 3), 200, dtype=np.uint8))
    out = tmp_path / "clip.mp4"
    dit = json.dumps(str(checkpoint))
    vidcli(
        "generate",
        "--recipe",
        str(micro_recipe),
        "--set",
        f"dit.path={dit}",
        "--image",
        str(frame),
        "--out",
        str(out),
        "a red circle moving right",
    )
    assert out.stat().st_size > 0
    # Without a content frame there is nothing to decode from: one line, exit 2.
    done = vidcli(
        "generate", "--recipe", str(micro_recipe), "--set", f"dit.path={dit}", "a", code=2
    )
    assert "pass --image or enable [t2i]" in done.stderr


def fresh_output(tmp_path) -> list[str]:
    return ["--set", f"train.output={json.dumps(str(tmp_path / 'run'))}"]


def test_train_dit_refuses_a_dit_without_a_condition_input(micro_recipe, tmp_path):
    off = "dit.overrides={ cond_embed = false }"
    done = vidcli("train-dit", str(micro_recipe), "--set", off, *fresh_output(tmp_path), code=2)
    assert "has cond_embed = false: on reducio-tiny latents the DiT takes the content" in (
        done.stderr
    )


def test_train_dit_refuses_image_conditioning_steps_on_reducio_latents(micro_recipe, tmp_path):
    ratio = "train.i2v_ratio=0.5"
    done = vidcli("train-dit", str(micro_recipe), "--set", ratio, *fresh_output(tmp_path), code=2)
    assert "i2v_ratio = 0.5: on reducio-tiny latents every sample is conditioned" in done.stderr
