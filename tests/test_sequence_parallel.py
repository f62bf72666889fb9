"""Sequence parallelism (DeepSpeed-Ulysses, `[launcher] sequence_parallel`): 2 gloo ranks on the
CPU must give what one process gives (model forward and gradients, generate, a train-dit step),
for any token count, and a size that does not divide the ranks or the heads exits 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.tiny_runs import REPO, recipe_args, subprocess_env, tiny_dit_values
from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.sequence_parallel import check_size, valid_sizes

# The demo model at 12 frames of 48x48: 3x3x3 = 27 latent tokens (odd: the last rank is padded),
# 4 heads, 3 steps.
SMALL = ["--frames", "12", "--height", "48", "--width", "48", "--steps", "3", "--format", "png"]


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc-per-node 2 ARGS` from the repository root."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *args]
    return subprocess.run(
        command,
        cwd=REPO,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("T", "H", "W", "mode"),
    [(1, 1, 13, "t2v"), (1, 1, 7, "cond"), (2, 2, 2, "t2v")],
    ids=["prime-13-tokens", "prime-7-tokens-i2v", "even-8-tokens"],
)
def test_mmdit_forward_and_gradients_equal_one_rank(T, H, W, mode):
    done = torchrun("tests/sp_model_worker.py", str(T), str(H), str(W), mode)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_valid_sizes_divide_world_and_heads():
    assert valid_sizes(24, 24) == [1, 2, 3, 4, 6, 8, 12, 24]
    assert valid_sizes(8, 24) == [1, 2, 4, 8]
    assert valid_sizes(2, 3) == [1]


def test_a_size_that_does_not_divide_is_refused_with_the_valid_ones():
    check_size(4, 8, 24)  # divides both
    with pytest.raises(UsageError, match=r"valid values for 24 ranks: 2, 3, 4, 6, 8, 12, 24"):
        check_size(5, 24, 24)
    with pytest.raises(UsageError, match=r"valid values for 2 ranks: 2$"):
        check_size(3, 2, 24)


def vidcli(*args: str) -> subprocess.CompletedProcess:
    """`python -m vidcli ARGS` in a fresh process (it spawns its own ranks)."""
    command = [sys.executable, "-m", "vidcli", *args]
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def frames(folder: Path) -> np.ndarray:
    """The PNG frames generate wrote into `folder`, (T, H, W, 3) uint8."""
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.fixture(scope="module")
def first_frame(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("i2v") / "first.png"
    image = np.zeros((48, 48, 3), np.uint8)
    image[8:30, 6:24] = (230, 40, 30)
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("case", ["t2v", "i2v", "taylorseer"])
def test_generate_on_two_sequence_parallel_ranks_writes_the_frames_of_one(
    tmp_path, first_frame, case
):
    extra = {
        "t2v": [],
        "i2v": ["--image", str(first_frame)],
        "taylorseer": ["--cache", "taylorseer:2"],
    }
    args = ["generate", "a red circle moving right", *SMALL, *extra[case]]
    one = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = vidcli(*args, "--out", str(tmp_path / "two"), "--nproc", "2",
                 "--set", "launcher.sequence_parallel=2", "--json")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    result = json.loads(two.stdout.strip().splitlines()[-1])
    assert result["sequence_parallel"] == 2
    assert result["image_tokens_per_rank"] == 14  # 27 tokens: 14 + 13 and a pad
    assert result["all_to_all_bytes_per_step"] > 0
    a, b = (frames(tmp_path / name).astype(int) for name in ("one", "two"))
    assert a.shape == b.shape == (12, 48, 48, 3)
    # Same frames up to float reduction order: at most one level where a rounding flips.
    assert np.abs(a - b).max() <= 1
    # Rank 0 alone wrote: the frames and the sidecar, nothing else.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "one.json", "two", "two.json"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_generate_with_a_size_that_does_not_divide_exits_2():
    done = vidcli("generate", "x", "--nproc", "2", "--set", "launcher.sequence_parallel=3")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "valid values for 2 ranks: 2" in done.stderr


def test_generate_refuses_a_cache_that_decides_from_shards():
    done = vidcli("generate", "x", "--cache", "toca", "--nproc", "2",
                  "--set", "launcher.sequence_parallel=2")  # fmt: skip
    assert done.returncode == 2
    assert "--cache toca and launcher.sequence_parallel = 2 cannot be combined" in done.stderr


def test_train_step_loss_and_reduced_gradients_equal_one_rank():
    done = torchrun("tests/sp_train_worker.py", "0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def train_dit(tmp_path: Path, steps: int, *extra: str) -> list[dict]:
    """A tiny train-dit run (ZeRO 0, a checkpoint at step 2); its metrics records."""
    values = tiny_dit_values(tmp_path) | {
        "train.max_steps": steps,
        "train.log_every": 1,
        "train.ckpt_every": 2,
        "launcher.zero_stage": 0,
    }
    done = vidcli("train-dit", *recipe_args("demo-dit.toml", values), *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_train_dit_logs_the_losses_of_one_process_and_resumes_on_another_size(tmp_path):
    one = train_dit(tmp_path / "one", 3)
    two = train_dit(tmp_path / "two", 2, "--nproc", "2", "--set", "launcher.sequence_parallel=2")
    assert [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two, strict=False):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["samples_seen"] == a["samples_seen"]  # a group's ranks read the same batch
    resumed = train_dit(tmp_path / "two", 3, "--resume")  # one process, no SP
    assert resumed[-1]["step"] == 3
    assert resumed[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-5)


def test_train_dit_with_a_size_that_does_not_divide_exits_2(tmp_path):
    values = tiny_dit_values(tmp_path) | {"train.max_steps": 1}
    args = recipe_args("demo-dit.toml", values)
    done = vidcli("train-dit", *args, "--nproc", "2", "--set", "launcher.sequence_parallel=4")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "launcher.sequence_parallel = 4 must divide" in done.stderr


def test_plans_count_one_ranks_token_share_plus_the_all_to_all_buffers():
    from vidcli import plans
    from vidcli.plans.sizes import GB
    from vidcli.recipe import load_recipe
    from vidcli.sequence_parallel import exchange_elements, token_share

    recipe_path = REPO / "recipes" / "opensora-v2-768px.toml"
    one, four = (
        plans.generate_plan(
            load_recipe(recipe_path, [f"launcher.sequence_parallel={n}"]), "cuda", "bf16", 80.0
        )
        for n in (1, 4)
    )
    # 3 CFG rows (t2i2v adds the image-conditioned branch), hidden size 3072, bf16.
    assert (four.image_tokens, four.text_tokens, four.cfg_rows) == (76032, 512, 3)
    buffers = exchange_elements(3, 76032, 512, 3072, 4) * 2 / GB
    assert four.all_to_all_gb == pytest.approx(buffers)
    share = token_share(76032, 512, 4)
    assert four.dit_activation_gb == pytest.approx(one.dit_activation_gb * share + buffers)
    assert "sequence parallel 4: per rank 19008 image + 512 text tokens" in four.stdout_lines()[2]

    train = [f"data.{k}={v}" for k, v in (("num_frames", 129), ("height", 576), ("width", 1024))]
    t1, t4 = (
        plans.train_plan(load_recipe(recipe_path, [*train, f"launcher.sequence_parallel={n}"]), 80)
        for n in (1, 4)
    )
    assert t4.all_to_all_gb > 0 and t4.sequence_parallel == 4
    share_gb = t1.activations_checkpointed_gb * share + t4.all_to_all_gb
    assert t4.activations_checkpointed_gb == pytest.approx(share_gb)
