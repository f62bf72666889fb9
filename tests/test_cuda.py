"""On a CUDA GPU: a train-dit step, a generate call, the attention fast path, the memory plan
against measured peaks. Marked `cuda` and skipped without a GPU (`benchmarks/gpu_check.sh` runs
them with `pytest -m cuda`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_runs import subprocess_env, tiny_dit_values

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

REPO = Path(__file__).resolve().parents[1]

CHECK_SCRIPT = r"""
import json, sys
import torch
from vidcli.recipe import load_recipe
from vidcli.train import dit as dit_stage, launcher

real_make_engine = dit_stage.make_engine
seen = set()


def make_engine(model, *args, **kwargs):
    engine = real_make_engine(model, *args, **kwargs)

    def check(module, args, kwargs):
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor):
                assert value.device == engine.device, (value.shape, value.device, engine.device)
                seen.add(str(value.device))

    engine.module.register_forward_pre_hook(check, with_kwargs=True)
    return engine


dit_stage.make_engine = make_engine
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
result = launcher.run_worker(dit_stage.run, recipe, None)
print(json.dumps({"loss": result.final_loss, "devices": sorted(seen),
                  "peak_gb": torch.cuda.max_memory_allocated() / 1e9,
                  "logged_peak_gb": result.metrics.get("peak_memory_gb")}))
"""


def test_train_dit_step_on_cuda(tmp_path):
    overrides = {
        **tiny_dit_values(tmp_path),
        "train.max_steps": 2,
        "train.i2v_ratio": 0.5,
        "launcher.precision": "bf16",
    }
    args = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHECK_SCRIPT,
            str(REPO / "recipes" / "demo-dit.toml"),
            json.dumps(args),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == ["cuda:0"]
    assert result["loss"] == result["loss"] and result["peak_gb"] > 0
    assert 0 < result["logged_peak_gb"] <= result["peak_gb"]  # metrics.jsonl reports the peak


def test_generate_on_cuda_defaults_to_bf16(tmp_path):
    out = tmp_path / "clip.mp4"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "vidcli",
            "generate",
            "a red circle moving right",
            "--out",
            str(out),
            "--steps",
            "4",
            "--device",
            "cuda",
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert out.is_file() and out.stat().st_size > 0
    assert result["device"] == "cuda" and result["dtype"] == "bf16"
    assert result["peak_memory_gb"] > 0


def test_attention_fast_path_matches_the_reference():
    from vidcli_kernels.attention import attention, attention_backend, attention_reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, 4, 1024, 64, device="cuda", dtype=torch.bfloat16, generator=gen)
        for _ in range(3)
    )
    hopper = torch.cuda.get_device_capability()[0] >= 9
    assert attention_backend(q) == "sdpa_cudnn" if hopper else attention_backend(q) != "sdpa_cudnn"
    out = attention(q, k, v).float()
    ref = attention_reference(q, k, v).float()
    assert (out - ref).abs().max() < 2e-2


def test_memory_plan_bounds_the_measured_denoiser_peak():
    """The plan's DiT activation estimate against `max_memory_allocated` of the same call."""
    from vidcli.models.mmdit import build_dit
    from vidcli.plans import sizes

    dit = build_dit("mmdit-b", device="cuda", dtype=torch.bfloat16, in_channels=128, patch_size=1)
    latent, rows, text_tokens = (128, 8, 16, 16), 2, 64
    on_meta = build_dit(dit.config, device="meta").to(torch.bfloat16)
    estimate = sizes.dit_inference_peak(on_meta, rows, latent, text_tokens, torch.bfloat16)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    shapes = sizes.dit_inputs(on_meta, rows, latent, text_tokens, torch.bfloat16)
    inputs = {
        k: None if v is None else torch.randn(v.shape, device="cuda", dtype=v.dtype)
        for k, v in shapes.items()
    }
    with torch.inference_mode():
        dit(**inputs)
    measured = torch.cuda.max_memory_allocated() - base
    assert 0.5 * estimate <= measured <= 1.2 * estimate, (measured, estimate)


def test_t2i2v_runs_every_model_on_the_gpu_without_offload():
    """Offload `none`: every model, the t2i AE included, sits on the GPU, and the t2i and video
    phases mix no devices or product dtypes (`strict_devices`)."""
    from device_check import module_devices, strict_devices
    from test_placement import models, t2i2v_recipe

    from vidcli.placement import Placement
    from vidcli.sampling.phases import first_frames, sample_videos
    from vidcli.sampling.pipeline import load_pipeline

    recipe = t2i2v_recipe()
    gpu = torch.device("cuda", 0)
    pipe = load_pipeline(recipe, Placement.resolve(str(gpu)))
    for role, module in models(pipe).items():
        assert module_devices(module) == {gpu}, role
    size = (4, recipe.sample.height, recipe.sample.width)
    with strict_devices():
        refs = first_frames(pipe, recipe.sample, ["a kite"], [0], size)
        video = sample_videos(pipe, recipe.sample, ["a kite"], [0], size, reference=refs)
    assert video.shape[:3] == (1, 3, 4) and torch.isfinite(video).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_cuda_1_is_honoured_by_generate_and_benchmark(tmp_path):
    """`--device cuda:1` computes on cuda:1 only: cuda:0 allocates nothing."""
    import vidcli.benchmark as bench
    from vidcli import generate

    torch.cuda.reset_peak_memory_stats(0)
    recipe = generate.load_generate_recipe(None, None, ["sample.steps=2", "sample.frames=4"])
    options = generate.GenerateOptions(["a red circle"], out=tmp_path / "a.mp4", device="cuda:1")
    assert generate.run(recipe, options).device == "cuda:1"
    bench.run(bench.BenchmarkOptions(kernels=True, device="cuda:1", repeat=1))
    assert torch.cuda.max_memory_allocated(0) == 0
