"""Plans count every byte: the state each caching method and sparse attention keep (against the
tensors the real policies hold after a sampling run), the EMA shadow, bucket maxima and SDPA's
saved tensors in the training plan."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_cfg_dit
from torch import nn

from vidcli import flow
from vidcli.plans import meta, plan_generate, plan_train
from vidcli.plans.state import cache_state_bytes, sparse_residual_bytes
from vidcli.recipe import SampleSection, load_recipe
from vidcli.sampling.cache import METHODS, CachedDiT, build_policy, parse_cache
from vidcli.sampling.cache.calibration import Recorder

STEPS = 8
N, C, T, H, W, L_TXT, D = 2, 4, 3, 4, 4, 5, 32
L_IMG = T * (H // 2) * (W // 2)
OPENSORA_768 = "recipes/opensora-v2-768px.toml"


@pytest.fixture(scope="module")
def tiny():
    return tiny_cfg_dit(STEPS, (N, C, T, H, W), text_tokens=L_TXT, hidden_size=D, single_blocks=3)


def _held_bytes(value, seen: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from a policy's attributes."""
    if isinstance(value, torch.Tensor):
        key = value.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return value.untyped_storage().nbytes()
    if isinstance(value, dict):
        return sum(_held_bytes(v, seen) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_held_bytes(v, seen) for v in value)
    if hasattr(value, "__dict__"):
        return sum(_held_bytes(v, seen) for v in vars(value).values())
    return 0


class HeldState(flow.SamplingHooks):
    """The loop's hooks for a `CachedDiT` that also record the largest state its policy held
    between evaluations (before the run's end resets it)."""

    def __init__(self, cached: CachedDiT):
        self.cached, self.most = cached, 0

    def _record(self) -> None:
        self.most = max(self.most, _held_bytes(self.cached.policy, set()))

    def before_evaluation(self, info: flow.StepInfo) -> None:
        self._record()
        self.cached.before_evaluation(info)

    def end_run(self) -> None:
        self._record()
        self.cached.end_run()


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
def test_cache_state_is_what_the_policy_holds_during_a_run(tiny, method):
    model, inputs, schedule = tiny
    recorder = CachedDiT(model, Recorder(STEPS), STEPS)
    with torch.no_grad():
        flow.sample_i2v(recorder, schedule=schedule, hooks=recorder, **inputs)
    policy = build_policy(parse_cache(method), recorder.policy.calibration(), STEPS, frames=T)
    cached = CachedDiT(model, policy, STEPS)
    held = HeldState(cached)
    with torch.no_grad():
        flow.sample_i2v(cached, schedule=schedule, hooks=held, **inputs)
    blocks = (len(model.double_blocks), len(model.single_blocks))
    planned = cache_state_bytes(method, 2 * N, N, L_IMG, L_TXT, D, blocks, C * 4, 4)
    assert planned == held.most


def test_sparse_residuals_are_one_attention_output_per_layer(tiny):
    from vidcli.sampling.acceleration import PlanHooks
    from vidcli_kernels.attention import use_attention_plan
    from vidcli_kernels.sparse_attention import SparsePattern
    from vidcli_kernels.video_attention import VideoAttentionConfig, VideoAttentionPlan

    model, inputs, schedule = tiny
    pattern = SparsePattern("window", window=(1, 1, 1), tile=(1, 1, 1), global_frames=0)
    config = VideoAttentionConfig(pattern=pattern, force_sparse=True)
    plan = VideoAttentionPlan(config, (T, H // 2, W // 2))
    with torch.no_grad(), use_attention_plan(plan):
        flow.sample_i2v(model.forward_video, schedule=schedule, hooks=PlanHooks(plan), **inputs)
    held = _held_bytes(plan._residual, set())
    layers = len(model.double_blocks) + len(model.single_blocks)
    sample = SampleSection(sparse_attention="window")
    assert sparse_residual_bytes(sample, 2 * N, L_IMG + L_TXT, D, layers, 4) == held
    off = SampleSection(sparse_attention="window", sparse_residual=False)
    assert sparse_residual_bytes(off, 2 * N, L_IMG + L_TXT, D, layers, 4) == 0


def test_768px_plan_counts_cache_state_and_refuses_in_one_line():
    """Issue 27: 76k tokens x 3 CFG rows in bf16; SmoothCache keeps 76 module outputs per row."""
    plain = load_recipe(OPENSORA_768)
    cached = load_recipe(OPENSORA_768, ["sample.cache='smoothcache'"])
    device = torch.device("cuda")
    base = plan_generate(plain, device, torch.bfloat16, 80)
    plan = plan_generate(cached, device, torch.bfloat16, 80)
    tokens = plan.image_tokens + plan.text_tokens
    assert plan.cache_state_gb == pytest.approx(3 * tokens * 3072 * 2 * (2 * 19 + 38) / 1e9)
    assert plan.cache_state_gb == pytest.approx(107.2, abs=0.1)
    assert base.fits and not plan.fits
    # Without a limit (no offload) the sampling phase grows by exactly the state.
    blocks = plan_generate(cached, device, torch.bfloat16, None)
    unlimited = plan_generate(plain, device, torch.bfloat16, None)
    assert blocks.phases_gb["dit"] - unlimited.phases_gb["dit"] == pytest.approx(
        plan.cache_state_gb
    )
    assert plan.notes[0].startswith("[sample] cache = 'smoothcache' keeps 107.2 GB")
    assert "\n" not in plan.notes[0]


def test_sparse_residuals_of_the_768px_plan_refuse_naming_sparse_residual():
    window = load_recipe(OPENSORA_768, ["sample.sparse_attention='window'"])
    plan = plan_generate(window, torch.device("cuda"), torch.bfloat16, 80)
    tokens = plan.image_tokens + plan.text_tokens
    assert plan.sparse_residual_gb == pytest.approx(3 * tokens * 3072 * 2 * 57 / 1e9)
    assert not plan.fits and "sparse_residual = false" in plan.notes[0]


def test_t2i_stage_is_planned_for_the_whole_batch():
    recipe = load_recipe(OPENSORA_768)
    one = plan_generate(recipe, torch.device("cuda"), torch.bfloat16, None)
    four = plan_generate(recipe, torch.device("cuda"), torch.bfloat16, None, batch_size=4)
    weights = sum(c.weight_gb for c in one.components)
    t2i_act = one.phases_gb["t2i"] - weights
    assert four.phases_gb["t2i"] - weights == pytest.approx(4 * t2i_act, rel=0.05)
    assert four.cfg_rows == 12 and "encode" in four.phases_gb


def test_image_condition_encode_has_its_own_phase():
    """`--image` encodes the still clip on the device before sampling: the AE and its encoder
    activations, which grow with the clip (16 -> 32 frames: about twice)."""
    device, dtype = torch.device("cuda"), torch.bfloat16
    recipe = load_recipe(None, ["sample.frames=16"])
    longer = load_recipe(None, ["sample.frames=32"])
    plan = plan_generate(recipe, device, dtype, 1000, image_condition=True)
    assert (
        plan.cfg_rows == 3 and "encode" not in plan_generate(recipe, device, dtype, 1000).phases_gb
    )
    weights = sum(c.weight_gb for c in plan.components)
    first = plan.phases_gb["encode"] - weights
    second = plan_generate(longer, device, dtype, 1000, image_condition=True).phases_gb["encode"]
    assert second - weights == pytest.approx(2 * first, rel=0.1)


def test_training_plan_counts_the_ema_shadow():
    latent = (128, 4, 8, 8)
    with_ema = plan_train(load_recipe(None, ["dit.preset='mmdit-s'"]), latent, 80)
    without = plan_train(
        load_recipe(None, ["dit.preset='mmdit-s'", "train.ema_decay=0"]), latent, 80
    )
    assert with_ema.ema_gb == pytest.approx(4 * with_ema.trainable_params / 1e9)
    assert without.ema_gb == 0
    assert with_ema.peak_gb - without.peak_gb == pytest.approx(with_ema.ema_gb)
    tight = plan_train(load_recipe(None, ["dit.preset='mmdit-s'"]), latent, without.peak_gb)
    assert not tight.fits and "ema_decay = 0" in tight.notes[0]


def test_training_plan_takes_the_largest_bucket():
    buckets = "data.buckets={'256px'={'1'=[1.0,32],'16'=[1.0,2]},'512px'={'16'=[1.0,1]}}"
    recipe = load_recipe(None, ["dit.preset='mmdit-s'", buckets])
    plan = plan_train(recipe, (128, 4, 8, 8), None)
    # dc-ae (32x): 256px at 3:2 is 352x224 px, 11x7 = 77 tokens a frame, at batch 32; 512px-16
    # is 4x16x16 = 1024 tokens at batch 1. batch x (image + 128 text tokens) picks the first.
    assert (plan.bucket, plan.tokens_per_sample, plan.batch_size) == ("256px-1-3:2", 77, 32)
    flat = plan_train(load_recipe(None, ["dit.preset='mmdit-s'"]), (128, 4, 8, 8), None)
    assert flat.bucket is None and plan.activations_gb > flat.activations_gb


def test_saved_for_backward_counts_what_fused_attention_keeps():
    q = torch.empty(2, 4, 1024, 64, device="meta", dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.empty_like(q, requires_grad=True) for _ in range(2))
    saved = meta.saved_for_backward(
        lambda: F.scaled_dot_product_attention(q * 1, k * 1, v * 1), nn.Identity()
    )
    # q, k, v, the output and the fp32 log-sum-exp per (batch, head, query).
    assert saved == 4 * q.nbytes + 2 * 4 * 1024 * 4


def _plan_json(*args: str) -> dict:
    from typer.testing import CliRunner

    from vidcli.cli import app

    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_generate_plan_cli_counts_the_cache_and_refuses():
    args = ["generate", "--recipe", OPENSORA_768, "--plan", "--device", "cuda"]
    plan = _plan_json(*args, "--gpu-memory", "80", "--set", "sample.cache='taylorseer'")
    # TaylorSeer keeps each module output and its first difference, per CFG branch: twice
    # SmoothCache's 107.2 GB, and one prompt's rows more (an older output a branch still views).
    assert plan["cache_state_gb"] == pytest.approx(214.5 + 107.2 / 3, abs=0.1)
    assert not plan["fits"] and plan["notes"][0].startswith("[sample] cache = 'taylorseer'")


def test_train_dit_plan_cli_counts_the_ema_shadow():
    plan = _plan_json("train-dit", "recipes/demo-dit.toml", "--plan", "--gpu-memory", "80")
    assert plan["ema_gb"] == pytest.approx(4 * plan["trainable_params"] / 1e9)
    off = _plan_json(
        "train-dit", "recipes/demo-dit.toml", "--plan", "--gpu-memory", "80",
        "--set", "train.ema_decay=0",
    )  # fmt: skip
    assert off["ema_gb"] == 0 and plan["peak_gb"] - off["peak_gb"] == pytest.approx(plan["ema_gb"])
