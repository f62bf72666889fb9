"""Output folders, `--resume` and the launcher's files, without training anything.

`launcher.run_worker` (the training itself) is replaced where a test only needs to see what gets
past the CLI and the launcher's checks; those checks run for real.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vidcli.cli import app, bare_resume_means_latest, main
from vidcli.errors import UsageError
from vidcli.recipe import load_recipe
from vidcli.train import checkpoint as ckpt
from vidcli.train import launcher
from vidcli.train.loop import truncate_metrics
from vidcli.train.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
DEMO_DIT = str(REPO / "recipes" / "demo-dit.toml")
DEMO_AE = str(REPO / "recipes" / "demo-ae.toml")


def fake_run(output: Path, last_step: int = 5) -> None:
    """An earlier run's traces: metrics up to `last_step` and one published checkpoint."""
    output.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, last_step + 1)]
    (output / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    step = ckpt.step_dir(output / "checkpoints", last_step)
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text(json.dumps({"step": last_step, "samples_seen": 10}))
    ckpt.write_manifest(step)


@pytest.fixture
def launched(monkeypatch):
    """Runs that get past `launcher.launch`'s checks, recorded instead of trained."""
    calls: list[dict] = []

    def record(run, recipe, resume):
        calls.append({"resume": resume})
        return {"ok": True}

    monkeypatch.setattr(launcher, "run_worker", record)
    return calls


def cli(*args: str):
    """The CLI as `vidcli` runs it (`main` completes a bare `--resume` before Typer parses)."""
    return CliRunner().invoke(app, bare_resume_means_latest(list(args)))


def test_fresh_run_into_a_folder_holding_a_run_is_refused(tmp_path, launched):
    run = tmp_path / "run"
    fake_run(run)
    before = (run / "metrics.jsonl").read_text()
    done = cli("train-dit", DEMO_DIT, "--output", str(run))
    assert done.exit_code == 2
    message = done.output.strip()
    assert len(message.splitlines()) <= 2  # the error line (+ its hint), no traceback
    assert str(run) in message and "--resume" in message and "--overwrite" in message
    assert (run / "metrics.jsonl").read_text() == before
    assert ckpt.complete_checkpoints(run / "checkpoints")  # the old run is untouched

    # An empty or unused folder is fine; so is continuing the run.
    assert cli("train-dit", DEMO_DIT, "--output", str(tmp_path / "new")).exit_code == 0
    assert cli("train-dit", DEMO_DIT, "--output", str(run), "--resume").exit_code == 0


def test_overwrite_clears_the_old_run_and_contradicts_resume(tmp_path, launched):
    run = tmp_path / "run"
    fake_run(run)
    assert cli("train-dit", DEMO_DIT, "--output", str(run), "--overwrite").exit_code == 0
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()
    fake_run(run)
    done = cli("train-dit", DEMO_DIT, "--output", str(run), "--overwrite", "--resume")
    assert done.exit_code == 2 and "choose one" in done.output


def test_bare_resume_means_latest(tmp_path, launched):
    with pytest.raises(SystemExit) as done:
        main(["train-ae", DEMO_AE, "--resume", "--output", str(tmp_path)])
    assert done.value.code == 0
    assert cli("train-ae", DEMO_AE, "--output", str(tmp_path), "--resume").exit_code == 0
    folder = str(tmp_path / "step")
    assert cli("train-dit", DEMO_DIT, "--output", str(tmp_path), "--resume", folder).exit_code == 0
    assert [c["resume"] for c in launched] == ["latest", "latest", folder]
    # Other commands and option values are left alone.
    assert bare_resume_means_latest(["generate", "--resume"]) == ["generate", "--resume"]


def test_resume_accepts_only_unchanged_vidcli_checkpoints(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    good = ckpt.step_dir(checkpoints, 3)
    (good / "deepspeed").mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, good / "deepspeed" / "mp_rank_00_model_states.pt")
    save_file({"w": torch.ones(2)}, str(good / "model.safetensors"))
    (good / "trainer_state.json").write_text('{"step": 3, "samples_seen": 6}')
    ckpt.write_manifest(good)
    assert ckpt.resolve_resume("latest", checkpoints) == good
    assert ckpt.resolve_resume(str(good), checkpoints) == good

    # A folder that merely looks like one (the old check: a trainer_state.json) is refused.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text('{"step": 3, "samples_seen": 6}')
    torch.save({"w": torch.ones(2)}, foreign / "evil.pt")
    with pytest.raises(UsageError, match="not a vidcli checkpoint"):
        ckpt.resolve_resume(str(foreign), checkpoints)

    shard = good / "deepspeed" / "mp_rank_00_model_states.pt"
    original = shard.read_bytes()
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # same size, one bit off
    with pytest.raises(UsageError, match=r"mp_rank_00_model_states\.pt changed"):
        ckpt.resolve_resume("latest", checkpoints)
    shard.write_bytes(original)

    torch.save({}, good / "deepspeed" / "extra.pt")  # a file slipped in after the save
    with pytest.raises(UsageError, match=re.escape("not listed: ['deepspeed/extra.pt']")):
        ckpt.resolve_resume(str(good), checkpoints)
    (good / "deepspeed" / "extra.pt").unlink()
    (good / "deepspeed" / "link.pt").symlink_to(foreign / "evil.pt")
    with pytest.raises(UsageError, match="symlinks are not allowed"):
        ckpt.resolve_resume(str(good), checkpoints)
    (good / "deepspeed" / "link.pt").unlink()
    assert ckpt.resolve_resume("latest", checkpoints) == good


def test_truncate_metrics_survives_a_torn_last_line_and_is_atomic(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 0.5}) for s in (1, 2, 3, 4)]
    metrics.write_text("\n".join(lines) + '\n{"step": 5, "lo')  # killed while appending
    truncate_metrics(metrics, 3)
    assert metrics.read_text() == "\n".join(lines[:3]) + "\n"

    # Written beside the file and renamed over it: a crash mid-write leaves the old file.
    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("vidcli.fileio.os.replace", crash)
    with pytest.raises(OSError):
        truncate_metrics(metrics, 1)
    assert metrics.read_text() == "\n".join(lines[:3]) + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_nproc_with_hostfile_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher, "run_worker", lambda *a: pytest.fail("must not start"))
    recipe = load_recipe(
        DEMO_DIT,
        [f'train.output="{tmp_path}"', 'launcher.hostfile="hosts.txt"', "launcher.nproc=4"],
    )
    with pytest.raises(UsageError, match=re.escape("--nproc 4 with --hostfile hosts.txt")):
        launcher.launch("dit", STAGES["dit"], recipe, Path(DEMO_DIT))


def test_hostfile_ranks_read_and_write_in_the_output_folder(tmp_path, monkeypatch):
    """The recipe ranks read and the result rank 0 writes live in the (shared) output folder."""
    seen: dict[str, list[str]] = {}

    def fake_deepspeed(command, env, stdout):
        seen["command"] = command
        recipe_file = Path(command[command.index("--recipe") + 1])
        result_file = Path(command[command.index("--result") + 1])
        assert recipe_file.is_file()
        result = {"stage": "dit", "steps": 1, "final_loss": 0.5, "wall_time_s": 1.0}
        result |= {"output": str(tmp_path), "checkpoint": "c", "samples_per_s": 1.0}
        result_file.write_text(json.dumps(result | {"tokens_per_s": 0.0}))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(launcher.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(subprocess, "run", fake_deepspeed)  # vidcli.launch.run_ranks calls it
    output = tmp_path / "run"
    recipe = load_recipe(DEMO_DIT, [f'train.output="{output}"', 'launcher.hostfile="hosts.txt"'])
    result = launcher.launch("dit", STAGES["dit"], recipe, Path(DEMO_DIT))
    assert result.steps == 1
    command = seen["command"]
    assert command[:3] == ["deepspeed", "--hostfile", "hosts.txt"]
    for flag in ("--recipe", "--result"):
        assert Path(command[command.index(flag) + 1]).parent.parent == output
    assert list(output.iterdir()) == []  # the launch folder is removed afterwards
