"""Rectified flow: schedules, training objective and samplers against the mmdit_a vectors."""

from __future__ import annotations

import math

import pytest
import torch
from mmdit_vectors import load_mmdit_vectors, reference_model
from tolerances import assert_close_trig, assert_max_rel

from vidcli import flow
from vidcli.errors import UsageError
from vidcli.models.mmdit import pack_latents
from vidcli.models.mmdit.layers import timestep_embedding


def timestep_arguments(t: torch.Tensor, dim: int = 256, base: float = 10_000.0) -> torch.Tensor:
    """The angles of the [cos, sin] embedding (spec §7.1) in float64: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float64) / half)
    args = 1000.0 * t.double()[:, None] * freqs[None]
    return torch.cat((args, args), dim=-1)


@pytest.fixture(scope="module")
def vectors(vectors_dir):
    return load_mmdit_vectors(vectors_dir)


# ---------------------------------------------------------------- shift and schedule


def test_shift_alpha_examples_from_spec():
    # spec §9 examples: (tokens per frame, latent frames) -> α
    assert flow.resolution_shift_alpha(252, 33) == pytest.approx(5.7326, abs=1e-4)
    assert flow.resolution_shift_alpha(2304, 33) == pytest.approx(11.872, abs=1e-3)
    assert flow.resolution_shift_alpha(576, 32) == pytest.approx(6.5997, abs=1e-4)
    assert flow.resolution_shift_alpha(2304, 1) == pytest.approx(2.0667, abs=1e-4)
    # spec §13.2: hcae 768px/128f (latent 18x32, 32 frames) trains with α ≈ 5.33, samples with 6.60.
    assert flow.training_shift_alpha(18, 32, 32) == pytest.approx(5.33, abs=5e-3)
    assert flow.inference_shift_alpha(18, 32, 32, patch=1) == pytest.approx(6.5997, abs=1e-4)


def test_schedules_match_reference(vectors):
    meta, tensors = vectors
    for spec in meta["schedules"]:
        got = flow.inference_schedule(spec["num_steps"], spec["image_seq_len"], spec["num_frames"])
        assert flow.resolution_shift_alpha(spec["image_seq_len"], spec["num_frames"]) == (
            pytest.approx(spec["shift_alpha"], rel=1e-15)
        )
        torch.testing.assert_close(torch.tensor(got), tensors[spec["key"]], atol=1e-6, rtol=0)
    # the float32 recipe: the first level is 1.0000001, not 1.0
    assert flow.inference_schedule(4, 12, 3)[0] == pytest.approx(1.0000001192092896, abs=0)


def test_schedule_options():
    assert flow.inference_schedule(4, 12, 3, shift=False) == [1.0, 0.75, 0.5, 0.25, 0.0]
    t = torch.linspace(1, 0, 5)
    assert flow.inference_schedule(4, 12, 3, flow_shift=3.0) == (3 * t / (1 + 2 * t)).tolist()
    with pytest.raises(UsageError, match="num_steps must be >= 1"):
        flow.inference_schedule(0, 12, 3)


# ---------------------------------------------------------------- training objective


def test_timestep_embedding_matches_reference(vectors):
    _, tensors = vectors
    t = tensors["tsemb.in.t"]
    assert_close_trig(timestep_embedding(t, 256), tensors["tsemb.out"], timestep_arguments(t))


def test_training_loss_matches_reference(vectors):
    meta, tensors = vectors
    case = meta["cases"]["train"]
    alpha = flow.training_shift_alpha(8, 6, 3)  # latent 4x3x8x6 of the case
    assert alpha == pytest.approx(case["shift_alpha"], rel=1e-15)
    t = flow.logit_normal_timesteps(tensors["train.in.t_raw"], alpha)
    torch.testing.assert_close(t, tensors["train.out.t"], atol=1e-6, rtol=0)
    x0, noise = tensors["train.in.x_0"], tensors["train.in.x_1"]
    torch.testing.assert_close(
        flow.noisy_latents(x0, noise, t), tensors["train.in.img"], atol=1e-5, rtol=0
    )
    target = flow.velocity_target(x0, noise)
    torch.testing.assert_close(target, tensors["train.out.v_target"], atol=1e-5, rtol=0)

    model = reference_model(vectors, "os2")
    inputs = {n: tensors[f"train.in.{n}"] for n in ("img_ids", "txt", "txt_ids", "y_vec", "cond")}
    with torch.no_grad():
        pred = model(img=flow.noisy_latents(x0, noise, t), timesteps=t, **inputs)
    assert_max_rel(pred, tensors["train.out.pred"])
    loss = flow.flow_matching_loss(pred, target).mean()
    assert loss.item() == pytest.approx(tensors["train.out.loss"].item(), abs=1e-5)


def test_sample_training_timesteps_is_seeded_logit_normal():
    t = flow.sample_training_timesteps(4096, 2.0, generator=torch.Generator().manual_seed(0))
    n = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, flow.time_shift(2.0, torch.sigmoid(n)))
    assert t.min() > 0 and t.max() < 1
    # the shift maps the logit-normal median 0.5 to α/(1+α)
    assert t.median().item() == pytest.approx(2 / 3, abs=0.02)


# ---------------------------------------------------------------- conditioning and guidance


def test_build_condition_kinds():
    shape = (2, 3, 20, 2, 2)
    ref = torch.arange(1, 21.0).reshape(1, 20, 1, 1).expand(3, 20, 2, 2)
    loop = flow.build_condition("i2v_loop", shape, refs=[ref, None])
    assert loop.mask[0, 0, :, 0, 0].tolist() == [1.0] + [0.0] * 18 + [1.0]
    assert loop.latent[0, 0, [0, -1], 0, 0].tolist() == [1.0, 20.0]
    assert loop.mask[1].sum() == 0 and loop.latent[1].abs().sum() == 0
    head = flow.build_condition("v2v_head", shape, refs=[ref, ref], causal=True)
    assert head.mask[1, 0, :, 0, 0].tolist() == [1.0] * 9 + [0.0] * 11
    tail = flow.build_condition("v2v_tail_easy", shape, refs=[ref, ref], causal=False)
    assert tail.latent[0, 0, :, 0, 0].tolist() == [0.0] * 4 + list(range(5, 21))
    assert flow.build_condition("t2v", shape).mask.sum() == 0
    with pytest.raises(UsageError, match="unknown condition kind 'i2v'; accepted: t2v, i2v_head"):
        flow.build_condition("i2v", shape)


def test_paste_reference_frames_item_zero_by_default():
    cond = flow.build_condition("i2v_head", (2, 1, 3, 1, 1), refs=torch.full((2, 1, 1, 1, 1), 7.0))
    x = torch.zeros(2, 1, 3, 1, 1)
    assert flow.paste_reference_frames(x, cond).flatten().tolist() == [7, 0, 0, 0, 0, 0]
    all_items = flow.paste_reference_frames(x, cond, replace_all_items=True)
    assert all_items.flatten().tolist() == [7, 0, 0, 7, 0, 0]


def test_guidance_schedules():
    # From 20 % of the schedule: step 10 of 50, step 2 of 10, whatever the step count.
    scales = [flow.oscillated_scale(7.5, i, 50, True) for i in range(14)]
    assert scales == [7.5] * 11 + [1.0, 7.5, 1.0]
    assert [flow.oscillated_scale(7.5, i, 10, True) for i in range(5)] == [7.5] * 3 + [1.0, 7.5]
    assert flow.oscillated_scale(7.5, 11, 50, False) == 7.5
    # rf2 at half the steps: Euler's alternation averaged, (7.5 + 1) / 2, at both evaluations.
    rf2 = [flow.oscillated_scale(7.5, i, 5, True, solver="rf2") for i in range(5)]
    assert rf2 == [7.5, 4.25, 4.25, 4.25, 4.25]
    g = flow.temporal_image_scale(3.0, step=2, num_steps=4, num_frames=3).flatten()
    # g_top = linspace(3, 1, 5)[2] = 2; frames get linspace(1, 2, 3)
    assert g.tolist() == [1.0, 1.5, 2.0]


# ---------------------------------------------------------------- trajectories


def run_trajectory(vectors, case: str):
    meta, tensors = vectors
    spec = meta["cases"][case]
    opt = spec["sampling_option"]
    model = reference_model(vectors, spec["model"])
    z, t5, clip = (tensors[f"{case}.in.{n}"] for n in ("z", "t5", "clip"))
    N, _, T, H, W = z.shape
    schedule = flow.inference_schedule(opt["num_steps"], H * W // 2**2, T)
    torch.testing.assert_close(
        torch.tensor(schedule), tensors[f"{case}.schedule"], atol=1e-6, rtol=0
    )
    steps = []

    def record(_step, x):
        steps.append(pack_latents(x, 2))

    with torch.no_grad():
        if opt["method"] == "distill":
            out = flow.sample_distilled(
                model.forward_video, z, schedule, t5[:N], clip[:N], opt["guidance"], callback=record
            )
        else:
            condition = None
            if spec["cond_type"] != "t2v":
                condition = flow.build_condition(
                    spec["cond_type"], z.shape, refs=tensors[f"{case}.in.ref"]
                )
            guidance = flow.GuidanceConfig(
                text=opt["guidance"],
                image=opt["guidance_img"],
                text_osci=opt["text_osci"],
                image_osci=opt["image_osci"],
                scale_temporal_osci=opt["scale_temporal_osci"],
                osci_start=10 / opt["num_steps"],  # the reference counts from step 10
            )
            # last rows of the text tables: the negative prompt ""
            out = flow.sample_i2v(
                model.forward_video, z, schedule, t5[:N], clip[:N], t5[N:], clip[N:],
                condition, guidance, callback=record,
            )  # fmt: skip
    return out, torch.stack(steps), tensors


@pytest.mark.parametrize("case", ["traj_t2v", "traj_i2v", "traj_flux_t2i"])
def test_trajectories_match_reference(vectors, case):
    out, steps, tensors = run_trajectory(vectors, case)
    assert_max_rel(steps, tensors[f"{case}.steps"])
    assert_max_rel(out, tensors[f"{case}.out"])
    if case == "traj_i2v":  # item 0 only gets its reference frame pasted back (spec §13.4)
        ref = tensors["traj_i2v.in.ref"]
        assert torch.equal(out[0, :, :1], ref[0])
        assert not torch.allclose(out[1, :, :1], ref[1], atol=1e-2)


def test_euler_integrates_a_constant_velocity_exactly():
    x = flow.sample_euler(lambda x, t, i: torch.ones_like(x), torch.zeros(3), [1.0, 0.6, 0.0])
    torch.testing.assert_close(x, torch.full((3,), -1.0))
    assert math.isclose(flow.time_shift(3.0, torch.tensor(0.5)).item(), 0.75)
