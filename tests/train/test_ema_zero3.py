"""EMA under ZeRO-3: each rank averages its own partition of every weight.

Two-rank train-dit runs (subprocesses, gloo on the CPU): the saved EMA matches ZeRO-2's, follows
the EMA recursion over the saved weights, resumes from a ZeRO-3 checkpoint, and `generate`
samples it; the plan counts 1/world of the EMA per rank.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_memory_plan import mmdit_params
from tiny_runs import recipe_args, subprocess_env, tiny_dit_values

from vidcli.models.mmdit.presets import DIT_PRESETS
from vidcli.plans import train as tp
from vidcli.recipe import load_recipe
from vidcli.train.ema import read_flat_range

DECAY = 0.9
STEPS = 4


def train_dit(folder: Path, zero_stage: int, *extra: str) -> dict:
    """A tiny train-dit run on 2 ranks, STEPS steps, a checkpoint after each; its JSON result."""
    values = {
        **tiny_dit_values(folder, clips=8),
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.lr": 1e-3,
        "train.log_every": 1,
        "train.ckpt_every": 1,
        "train.keep_last": STEPS,
        "train.max_steps": STEPS,
        "train.ema_decay": DECAY,
        "launcher.zero_stage": zero_stage,
    }
    command = [sys.executable, "-m", "vidcli", "train-dit", *recipe_args("demo-dit.toml", values)]
    done = subprocess.run(
        [*command, "--nproc", "2", "--json", *extra],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def checkpoint(folder: Path, step: int) -> Path:
    return folder / "run" / "checkpoints" / f"step-{step:07d}"


def weights(folder: Path, step: int, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint(folder, step) / f"{name}.safetensors"))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def zero3(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zero3")
    train_dit(folder, 3)
    return folder


@pytest.fixture(scope="module")
def zero2(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zero2")
    train_dit(folder, 2)
    return folder


@pytest.mark.slow  # 2-rank train-dit runs (the module fixtures)
def test_zero3_ema_and_weights_match_zero2(zero3, zero2):
    """Same seeds and data: ZeRO-3's saved model and EMA equal ZeRO-2's to 1e-5.

    Why not bit for bit: ZeRO-2 all-reduces gradients in flat buckets, ZeRO-3 reduce-scatters
    them per parameter and sums the clipping norm in another order, so gradients differ in their
    last fp32 bits; AdamW's normalised update (m / sqrt(v)) can enlarge that for elements whose
    gradient is near zero. Measured: 4e-6 after 4 steps of lr 1e-3; 1e-5 is 1% of one step.
    """
    for name in ("model", "ema"):
        three, two = weights(zero3, STEPS, name), weights(zero2, STEPS, name)
        assert three.keys() == two.keys()
        for key in two:
            assert three[key].dtype == torch.float32
            torch.testing.assert_close(three[key], two[key], rtol=0, atol=1e-5, msg=key)
    # The comparison can tell the EMA from the weights: they are far apart after 4 steps at 0.9.
    assert largest_difference(weights(zero3, STEPS, "ema"), weights(zero3, STEPS, "model")) > 1e-3


@pytest.mark.slow  # 2-rank train-dit runs (the module fixtures)
def test_zero3_ema_is_the_running_average_of_the_saved_weights(zero3):
    """Closed form within one ZeRO-3 run: ema_k = d * ema_(k-1) + (1 - d) * weights_k, for every
    parameter, to fp32 rounding (the gathered slices land in the right places)."""
    for step in range(2, STEPS + 1):
        before, now = weights(zero3, step - 1, "ema"), weights(zero3, step, "ema")
        model = weights(zero3, step, "model")
        assert set(now) == set(before) <= set(model)
        for key in now:
            expected = DECAY * before[key] + (1 - DECAY) * model[key]
            torch.testing.assert_close(now[key], expected, rtol=1e-6, atol=1e-7, msg=key)


@pytest.mark.slow  # 2-rank train-dit runs (the module fixtures)
def test_resume_from_zero3_continues_the_ema(zero3, tmp_path):
    """Resumed at step 2 (each rank re-reads its slice of ema.safetensors), the EMA at step 4
    is the uninterrupted run's.

    Tolerance: 5e-7 (4 fp32 ulps at 1). The resumed run's weights already differ from the
    uninterrupted run's by one ulp (1.2e-7) at step 4, as they do under ZeRO-2 (DeepSpeed's
    restored optimizer); an EMA restarted from the weights instead of restored would be off by
    about 1e-3.
    """
    resumed = train_dit(tmp_path, 3, "--resume", str(checkpoint(zero3, 2)))
    assert resumed["resumed_from"] == str(checkpoint(zero3, 2)) and resumed["steps"] == STEPS
    # The first step after the resume averages the restored EMA: the closed form holds exactly.
    restored, model3 = weights(zero3, 2, "ema"), weights(tmp_path, 3, "model")
    for key, ema in weights(tmp_path, 3, "ema").items():
        expected = DECAY * restored[key] + (1 - DECAY) * model3[key]
        torch.testing.assert_close(ema, expected, rtol=1e-6, atol=1e-7, msg=key)
    for name in ("ema", "model"):
        straight, split = weights(zero3, STEPS, name), weights(tmp_path, STEPS, name)
        assert straight.keys() == split.keys()
        for key in straight:
            torch.testing.assert_close(split[key], straight[key], rtol=0, atol=5e-7, msg=key)


@pytest.mark.slow  # 2-rank train-dit runs (the module fixtures)
def test_generate_samples_the_ema_of_a_zero3_checkpoint(zero3):
    """`generate --checkpoint` on a ZeRO-3 run loads its EMA (and `--raw-weights` the model)."""
    from vidcli.generate import load_generate_recipe
    from vidcli.sampling.pipeline import load_pipeline

    folder = checkpoint(zero3, STEPS)
    recipe = load_generate_recipe(None, folder, [])
    for use_ema, name in ((True, "ema"), (False, "model")):
        state = load_pipeline(recipe, ema=use_ema).dit.state_dict()
        for key, value in weights(zero3, STEPS, name).items():
            assert torch.equal(state[key].cpu().float(), value), (name, key)


def test_plan_counts_a_ranks_partition_of_the_ema_under_zero3():
    """The 11B DiT on 8 ranks: the EMA is 4 bytes per parameter over 8 ranks under ZeRO-3, whole
    on every rank under ZeRO-2, and on the CPU with parameter offload; no refusal note."""
    params = mmdit_params(DIT_PRESETS["opensora-v2-hcae"])
    latent = (128, 4, 8, 8)

    def plan(*overrides: str) -> tp.TrainPlan:
        recipe = load_recipe("recipes/hcae.toml", ["train.ema_decay=0.9999", *overrides])
        return tp.plan_train(recipe, latent, gpu_memory_gb=80, world=8)

    zero3 = plan("launcher.zero_stage=3")
    assert zero3.trainable_params == params
    assert zero3.ema_gb == pytest.approx(params * 4 / 8 / 1e9, rel=1e-12)
    assert zero3.ema_gb == pytest.approx(zero3.weights_gb, rel=1e-12)  # sharded like the weights
    assert not any("EMA" in note or "refused" in note for note in zero3.notes)
    assert plan("launcher.zero_stage=2").ema_gb == pytest.approx(params * 4 / 1e9, rel=1e-12)
    offloaded = plan("launcher.zero_stage=3", "launcher.offload_params=true")
    assert offloaded.ema_gb == 0.0


@pytest.mark.parametrize("world", [2, 3, 8])
def test_read_flat_range_reads_a_ranks_slice(tmp_path, world):
    """Each rank's slice of a flattened tensor, as DeepSpeed splits it (equal slices of the
    padded tensor, the padding past the end dropped), equals slicing the whole tensor."""
    gen = torch.Generator().manual_seed(0)
    shapes = {"matrix": (5, 3), "vector": (7,), "scalar": (), "empty": (2, 0, 3), "deep": (4, 1, 6)}
    tensors = {k: torch.randn(shape, generator=gen) for k, shape in shapes.items()}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    with safe_open(str(tmp_path / "t.safetensors"), framework="pt", device="cpu") as f:
        for name, whole in tensors.items():
            n = whole.numel()
            size = -(-n // world)
            for rank in range(world):
                start = min(rank * size, n)
                stop = min(start + size, n)
                got = read_flat_range(f, name, start, stop)
                assert torch.equal(got, whole.reshape(-1)[start:stop]), (name, rank)
