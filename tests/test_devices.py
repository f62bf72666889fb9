"""Device and dtype: `vidcli.devices`, and train-dit feeding its DiT on the engine's device only.

The train-dit test needs no GPU: `device_check.FAKE_DEVICE` is a second device on the CPU, the
DeepSpeed engine is told it lives there (as it would on CUDA), and a forward pre-hook on the DiT
fails the run if any input tensor is elsewhere. The sabotaged runs show the test catches a
forgotten batch move and a freshly created tensor without `device=`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from device_check import FAKE_DEVICE, fake_device, strict_devices
from tiny_runs import subprocess_env, tiny_ae_values, tiny_dit_values

from vidcli import devices
from vidcli.errors import UsageError
from vidcli.placement import Placement

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def test_resolve_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device(None) == torch.device("cpu")
    assert devices.resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert devices.resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert devices.resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert devices.resolve_device("cuda", require_available=False) == torch.device("cuda")
    with pytest.raises(UsageError, match="--device cuda: no CUDA device"):
        devices.resolve_device("cuda")
    with pytest.raises(UsageError, match="--device tpu: choose auto, cpu, cuda"):
        devices.resolve_device("tpu")
    with pytest.raises(UsageError, match="--dtype int8: choose one of bf16, fp16, fp32"):
        devices.resolve_dtype("int8", torch.device("cpu"))


def test_move_to_moves_tensors_and_keeps_generators():
    gen = torch.Generator().manual_seed(0)
    batch = {"latent": torch.ones(2), "ids": torch.arange(3), "generator": gen, "pair": (1, [2])}
    with fake_device() as device:
        moved = devices.move_to(batch, device, torch.bfloat16)
    assert moved["latent"].device == FAKE_DEVICE and moved["latent"].dtype == torch.bfloat16
    assert moved["ids"].device == FAKE_DEVICE and moved["ids"].dtype == torch.int64
    assert moved["generator"] is gen and moved["pair"] == (1, [2])


def test_noise_is_drawn_on_the_cpu_then_moved():
    expected = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    with fake_device() as device:
        noise = devices.randn_on((2, 3), torch.Generator().manual_seed(7), device)
        assert noise.device == FAKE_DEVICE
    assert torch.equal(noise.as_subclass(torch.Tensor), expected)


SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from device_check import FAKE_DEVICE, assert_inputs_on, fake_device
from vidcli import devices
from vidcli.recipe import load_recipe
from vidcli.train import ae as ae_stage, dit as dit_stage, dit_loss, launcher

overrides, sabotage, stage = json.loads(sys.argv[2]), sys.argv[3], sys.argv[5]
stage_module = {"dit": dit_stage, "ae": ae_stage}[stage]
real_make_engine = stage_module.make_engine


def make_engine(model, *args, **kwargs):
    engine = real_make_engine(model, *args, **kwargs)
    engine.device = FAKE_DEVICE  # where DeepSpeed's accelerator would have put a CUDA rank
    assert_inputs_on(engine.module, lambda: engine.device)
    return engine


stage_module.make_engine = make_engine
if sabotage == "batch":  # the loop forgets to move the batch
    devices.move_to = lambda obj, device, dtype=None: obj
if sabotage == "ids":  # position ids created without device=
    real_ids = dit_loss.make_image_ids
    dit_loss.make_image_ids = lambda *shape, device=None: real_ids(*shape)
recipe = load_recipe(sys.argv[4], overrides)
with fake_device():
    result = launcher.run_worker(stage_module.run, recipe, None)
print(json.dumps({"steps": result.steps, "loss": result.final_loss}))
"""


def run_stage(
    tmp_path: Path, stage: str, overrides: dict[str, object], sabotage: str = "none"
) -> subprocess.CompletedProcess:
    """`SCRIPT`: the `stage` ("dit" / "ae") worker of demo-<stage>.toml on the fake device."""
    args = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    recipe = str(REPO / "recipes" / f"demo-{stage}.toml")
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(TESTS), json.dumps(args), sabotage, recipe, stage],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        cwd=tmp_path,
    )


def run_train_dit(tmp_path: Path, sabotage: str) -> subprocess.CompletedProcess:
    """Two train-dit steps of a tiny DiT (bf16 autocast, i2v conditioning) on the fake device."""
    overrides = {
        **tiny_dit_values(tmp_path),
        "train.max_steps": 2,
        "train.ckpt_every": 2,
        "train.i2v_ratio": 0.5,  # image-conditioned samples: the cond tensors are checked too
        "launcher.precision": "bf16",
    }
    return run_stage(tmp_path, "dit", overrides, sabotage)


def test_train_dit_feeds_the_dit_on_the_engine_device(tmp_path):
    done = run_train_dit(tmp_path, "none")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["loss"] == result["loss"]  # finite, not NaN


@pytest.mark.parametrize("sabotage", ["batch", "ids"])
def test_the_device_check_catches_a_missing_move(tmp_path, sabotage):
    done = run_train_dit(tmp_path, sabotage)
    assert done.returncode != 0
    assert "not on the engine's device cpu:0" in done.stderr, done.stderr[-3000:]


def test_generate_in_bf16_on_the_cpu_matches_fp32(tmp_path):
    """The bf16 path (DiT weights in bf16, sampling and decode under autocast) runs end to end
    and stays close to fp32: a dtype mismatch anywhere would raise (`strict_devices` also where
    the CPU kernels would promote)."""
    from vidcli import generate

    recipe = generate.load_generate_recipe(None, None, ["sample.steps=2", "sample.frames=4"])
    videos = {}
    for dtype in ("fp32", "bf16"):
        options = generate.GenerateOptions(
            prompts=["a red circle moving right"],
            out=tmp_path / f"{dtype}.mp4",
            device="cpu",
            dtype=dtype,
        )
        pipe = generate.load_pipeline(recipe, Placement.resolve("cpu", dtype))
        assert next(pipe.dit.parameters()).dtype == devices.DTYPES[dtype]
        size = (4, recipe.sample.height, recipe.sample.width)
        with strict_devices():
            videos[dtype] = generate.sample_videos(pipe, recipe.sample, options.prompts, [0], size)
    assert videos["bf16"].dtype == torch.float32
    error = (videos["bf16"] - videos["fp32"]).abs().mean().item()
    assert error < 0.05, error


def test_smaller_tiling_halves_down_to_one_latent_unit():
    from vidcli.models.dcae import TilingConfig
    from vidcli.offload import FIRST_TILING, smaller_tiling

    assert smaller_tiling(None, 32, 4) == FIRST_TILING
    tiling = TilingConfig(spatial_tile=256, temporal_tile=32, overlap=0.25)
    sizes = []
    while tiling is not None:
        sizes.append((tiling.spatial_tile, tiling.temporal_tile))
        tiling = smaller_tiling(tiling, 32, 4)
    assert sizes == [(256, 32), (128, 16), (64, 8), (32, 4)]


def test_decode_retries_with_smaller_tiles_after_out_of_memory():
    from vidcli.offload import decode_with_retry

    class OneTileFits:
        spatial_compression, time_compression, tiling = 32, 4, None

        def decode(self, z):
            if self.tiling is None or self.tiling.spatial_tile > 64:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return z * 2

    ae = OneTileFits()
    out = decode_with_retry(ae, torch.ones(1))
    assert torch.equal(out, torch.full((1,), 2.0))
    assert (ae.tiling.spatial_tile, ae.tiling.temporal_tile) == (64, 8)


@pytest.mark.parametrize(
    ("cuda", "dtype", "capability", "flash", "forced", "expected"),
    [
        (False, torch.bfloat16, None, True, "", "sdpa"),  # CPU
        (True, torch.float32, (9, 0), True, "", "sdpa"),  # fp32: no fused low-precision kernel
        (True, torch.bfloat16, (9, 0), True, "", "sdpa_cudnn"),  # Hopper: cuDNN beats FA2 1.8x
        (True, torch.bfloat16, (8, 0), True, "", "flash_attn"),  # Ampere with flash-attn
        (True, torch.bfloat16, (8, 0), False, "", "sdpa"),
        (True, torch.bfloat16, (9, 0), True, "flash_attn", "flash_attn"),  # forced
        (True, torch.bfloat16, (9, 0), False, "flash_attn", "sdpa_cudnn"),  # not installed
    ],
)
def test_attention_backend_policy(cuda, dtype, capability, flash, forced, expected):
    from vidcli_kernels.attention import choose_backend

    low = dtype in (torch.float16, torch.bfloat16)
    chosen = choose_backend(
        cuda=cuda,
        low_precision=low,
        head_dim=128,
        capability=capability,
        flash_installed=flash,
        forced=forced,
    )
    assert chosen == expected


def test_train_ae_with_gan_feeds_its_engines_on_their_device(tmp_path):
    """train-ae's AE and discriminator engines get their inputs on the engine's device."""
    overrides = {
        **tiny_ae_values(tmp_path),
        "data.num_frames": 4,
        "data.height": 32,
        "data.width": 32,
        "train.batch_size": 2,
        "train.max_steps": 2,
        "train.ckpt_every": 2,
        "train.gan_start": 1,
        "launcher.precision": "bf16",
    }
    done = run_stage(tmp_path, "ae", overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 2


def test_offload_modes_sample_the_same_video_on_the_cpu():
    """`model` and `blocks` offload run the same math (their moves are CPU to CPU here)."""
    from vidcli import generate

    recipe = generate.load_generate_recipe(None, None, ["sample.steps=2", "sample.frames=4"])
    size = (4, recipe.sample.height, recipe.sample.width)
    videos = {}
    for offload in ("none", "model", "blocks"):
        pipe = generate.load_pipeline(recipe, Placement("cpu", offload=offload, park=True))
        videos[offload] = generate.sample_videos(
            pipe, recipe.sample, ["a red circle moving right"], [0], size
        )
        hooked = [b for b in pipe.dit.single_blocks if b._forward_pre_hooks]
        assert bool(hooked) == (offload == "blocks")
    assert torch.equal(videos["model"], videos["none"])
    assert torch.equal(videos["blocks"], videos["none"])
