"""Sampling loop: CFG batch layout, RF-Solver (rf2) and its inversion, Linear Proportional Leap."""

from __future__ import annotations

import math

import pytest
import torch
from mmdit_vectors import load_mmdit_vectors, reference_model

from vidcli import flow
from vidcli.errors import UsageError
from vidcli.models.mmdit import pack_latents

TRAJECTORY_TOL = 1e-3


@pytest.fixture(scope="module")
def vectors(vectors_dir):
    return load_mmdit_vectors(vectors_dir)


class RowCounter:
    """Wraps a model call and records the batch rows of every evaluation."""

    def __init__(self, model_fn):
        self.model_fn, self.rows = model_fn, []

    def __call__(self, latents, *args):
        self.rows.append(latents.shape[0])
        return self.model_fn(latents, *args)


# ---------------------------------------------------------------- CFG batch layout


def test_t2v_cfg_runs_2n_rows_and_keeps_the_reference_trajectory(vectors):
    meta, tensors = vectors
    case = "traj_t2v"
    opt = meta["cases"][case]["sampling_option"]
    z, t5, clip = (tensors[f"{case}.in.{n}"] for n in ("z", "t5", "clip"))
    N, _, T, H, W = z.shape
    schedule = flow.inference_schedule(opt["num_steps"], H * W // 2**2, T)
    model = RowCounter(reference_model(vectors, "os2").forward_video)
    steps = []
    with torch.no_grad():
        out = flow.sample_i2v(
            model, z, schedule, t5[:N], clip[:N], t5[N:], clip[N:],
            # the reference oscillates from step 10, past these steps
            guidance=flow.GuidanceConfig(text=opt["guidance"], osci_start=10 / opt["num_steps"]),
            callback=lambda _i, x: steps.append(pack_latents(x, 2)),
        )  # fmt: skip
    assert model.rows == [2 * N] * opt["num_steps"]
    torch.testing.assert_close(
        torch.stack(steps), tensors[f"{case}.steps"], atol=TRAJECTORY_TOL, rtol=0
    )
    torch.testing.assert_close(out, tensors[f"{case}.out"], atol=TRAJECTORY_TOL, rtol=0)


def _toy_i2v(guidance: flow.GuidanceConfig, model_fn=None):
    """sample_i2v on 2 prompts with a head-frame condition; the rows of each evaluation."""
    N, shape = 2, (2, 1, 3, 2, 2)
    model_fn = model_fn or (lambda x, t, *a: torch.zeros_like(x))
    calls = RowCounter(model_fn)
    cond = flow.build_condition("i2v_head", shape, refs=torch.ones(2, 1, 1, 2, 2))
    txt, y = torch.arange(N * 32.0).reshape(N, 4, 8) / 64, torch.zeros(N, 6)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = flow.sample_i2v(calls, noise, [1.0, 0.5, 0.0], txt, y, txt[:1] * 0, y[:1], cond, guidance)
    return calls.rows, out


def test_image_condition_runs_3n_rows_and_drops_the_rows_a_scale_of_1_cancels():
    N, fixed = 2, {"text_osci": False, "image_osci": False, "scale_temporal_osci": False}
    assert _toy_i2v(flow.GuidanceConfig(**fixed))[0] == [3 * N, 3 * N]
    assert _toy_i2v(flow.GuidanceConfig(image=1.0, **fixed))[0] == [2 * N, 2 * N]
    assert _toy_i2v(flow.GuidanceConfig(text=1.0, image=1.0, **fixed))[0] == [N, N]
    # Open-Sora's oscillation sets both scales to 1 at step 1 of 2 (from 20 % of the schedule).
    assert _toy_i2v(flow.GuidanceConfig())[0] == [3 * N, N]


def test_image_scale_1_equals_the_three_row_formula():
    """v_u + g_txt·(v_c − v_u) on 2N rows is v_u2 + 1·(v_u − v_u2) + g_txt·(v_c − v_u)."""

    def model_fn(x, t, txt, y, cond_latent, cond_mask, _):
        return torch.sin(3 * x + cond_latent) * (1 + txt.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1))

    guidance = flow.GuidanceConfig(
        text=4.0, image=1.0, text_osci=False, image_osci=False, scale_temporal_osci=False
    )
    rows, out = _toy_i2v(guidance, model_fn)
    assert rows == [4, 4]
    N, shape = 2, (2, 1, 3, 2, 2)
    cond = flow.build_condition("i2v_head", shape, refs=torch.ones(2, 1, 1, 2, 2))
    txt = torch.arange(N * 32.0).reshape(N, 4, 8) / 64
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    rows_txt = torch.cat((txt, torch.zeros_like(txt), torch.zeros_like(txt)))  # negative: zeros
    rows_cond = torch.cat((cond.latent, cond.latent, torch.zeros_like(cond.latent)))
    for t, t_next in ((1.0, 0.5), (0.5, 0.0)):
        v_c, v_u, v_u2 = model_fn(
            torch.cat([x] * 3), t, rows_txt, None, rows_cond, None, None
        ).chunk(3)
        x = x + (t_next - t) * (v_u2 + 1.0 * (v_u - v_u2) + 4.0 * (v_c - v_u))
    torch.testing.assert_close(out, flow.paste_reference_frames(x, cond, False))


# ---------------------------------------------------------------- RF-Solver


def test_rf2_is_exact_on_constant_and_time_linear_velocity_fields():
    schedule = [1.0, 0.7, 0.2, 0.0]
    const = flow.sample_ode(
        lambda x, t, i: torch.full_like(x, 2.0), torch.zeros(3), schedule, "rf2"
    )
    torch.testing.assert_close(const, torch.full((3,), -2.0), atol=1e-7, rtol=0)

    # v = 1 + 4t: x(0) = x(1) - ∫₀¹ v dt = -3; midpoint is exact for v linear in t, Euler is not
    def linear(x, t, i):
        return torch.full_like(x, 1 + 4 * t)

    rf2 = flow.sample_ode(linear, torch.zeros(3), schedule, "rf2")
    euler = flow.sample_ode(linear, torch.zeros(3), schedule, "euler")
    torch.testing.assert_close(rf2, torch.full((3,), -3.0), atol=1e-6, rtol=0)
    assert (euler + 3.0).abs().max() > 0.5


def test_rf2_converges_at_second_order():
    # dx/dt = x on t: 1 -> 0 from x(1) = 1 gives x(0) = e^-1; the error shrinks 4x per halving
    def errors(solver):
        out = []
        for n in (8, 16, 32):
            schedule = torch.linspace(1, 0, n + 1, dtype=torch.float64).tolist()
            x = flow.sample_ode(
                lambda x, t, i: x, torch.ones(1, dtype=torch.float64), schedule, solver
            )
            out.append(abs(x.item() - math.exp(-1)))
        return out

    rf2, euler = errors("rf2"), errors("euler")
    assert rf2[0] / rf2[1] == pytest.approx(4.0, rel=0.1)
    assert rf2[1] / rf2[2] == pytest.approx(4.0, rel=0.1)
    assert euler[1] / euler[2] == pytest.approx(2.0, rel=0.1)


def test_unknown_solver_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown solver 'rk4'; accepted: euler, rf2"):
        flow.sample_ode(lambda x, t, i: x, torch.ones(1), [1.0, 0.0], "rk4")


@pytest.fixture(scope="module")
def demo_dit():
    from vidcli.demo import DEMO_DIR
    from vidcli.models.mmdit.io import load_dit

    return load_dit(str(DEMO_DIR / "dit")).float().eval()


# Round-trip tolerance of invert-then-sample on the demo model at 20 steps, relative L2. The
# inversion error of an order-p solver scales as h^p: rf2 measured 0.37 %, Euler 13 %.
INVERSION_TOL = 0.01


@pytest.mark.slow
def test_inversion_then_sampling_gives_back_the_latent(demo_dit):
    g = torch.Generator().manual_seed(0)
    # The round trip does not depend on the prompt; fixed embeddings keep MiniLM out of the test.
    txt, y = 0.1 * torch.randn(1, 16, 384, generator=g), 0.1 * torch.randn(1, 384, generator=g)
    noise = torch.randn(1, 16, 4, 8, 8, generator=g)
    schedule = flow.inference_schedule(20, 16, 4)
    unguided = flow.GuidanceConfig(text=1.0, text_osci=False)
    model = RowCounter(demo_dit.forward_video)

    def sample(z, solver):
        return flow.sample_i2v(model, z, schedule, txt, y, txt, y, guidance=unguided, solver=solver)

    with torch.no_grad():
        x0 = sample(noise, "euler")  # a latent the model itself generates
        assert model.rows == [1] * 20  # guidance 1: no negative rows
        errors = {}
        for solver in ("rf2", "euler"):
            z = flow.invert(model, x0, schedule, txt, y, solver=solver)
            errors[solver] = ((sample(z, solver) - x0).norm() / x0.norm()).item()
    assert errors["rf2"] < INVERSION_TOL
    assert errors["euler"] > 5 * errors["rf2"]


# ---------------------------------------------------------------- Linear Proportional Leap


def test_leap_fires_after_patience_steps_without_improvement():
    # A velocity that never turns: the cosine is 1 from min_step on, then never improves, so the
    # leap fires `patience` steps later, from x_5 straight to t = 0 along v_5.
    schedule = torch.linspace(1, 0, 11).tolist()
    calls = []

    def velocity(x, t, i):
        calls.append(i)
        return torch.ones(1, 1, 1, 2, 3) * (1 + t)  # same direction, changing length

    leap = flow.LeapConfig(min_step=2, eps=1e-3, patience=3)
    x = flow.sample_ode(velocity, torch.zeros(1, 1, 1, 2, 3), schedule, leap=leap)
    assert calls == [0, 1, 2, 3, 4, 5]
    x5 = -sum(0.1 * (1 + t) for t in schedule[:5])  # Euler steps 0..4
    torch.testing.assert_close(x, torch.full_like(x, x5 - schedule[5] * (1 + schedule[5])))


def test_leap_waits_while_the_velocity_keeps_turning():
    schedule = torch.linspace(1, 0, 11).tolist()

    def turning(x, t, i):  # turns by 1/(i+1) rad at step i: the cosine rises at every step
        angle = sum(1 / (k + 1) for k in range(i + 1))
        return torch.tensor([math.cos(angle), math.sin(angle)]).reshape(1, 1, 1, 1, 2)

    calls = []
    flow.sample_ode(
        lambda x, t, i: calls.append(i) or turning(x, t, i),
        torch.zeros(1, 1, 1, 1, 2),
        schedule,
        leap=flow.LeapConfig(min_step=1, eps=0.0, patience=3),
    )
    assert calls == list(range(10))


def test_leap_config_scales_with_the_run():
    assert flow.LeapConfig.for_steps(30, 0.47).min_step == 14
    assert flow.LeapConfig.for_steps(50, 0.5, patience=2) == flow.LeapConfig(25, 1e-3, 2)


class Recorder(flow.SamplingHooks):
    def __init__(self):
        self.infos, self.ended = [], 0

    def before_evaluation(self, info):
        self.infos.append(info)

    def end_run(self):
        self.ended += 1


def test_hooks_see_every_evaluation_with_its_batch_layout():
    N, shape = 2, (2, 1, 2, 2, 2)
    txt, y = torch.zeros(N, 4, 8), torch.zeros(N, 6)
    model = RowCounter(lambda x, t, *a: torch.ones_like(x))
    hooks = Recorder()
    schedule = torch.linspace(1, 0, 13).tolist()
    flow.sample_i2v(model, torch.zeros(shape), schedule, txt, y, txt[:1], y[:1], solver="rf2",
                    hooks=hooks)  # fmt: skip
    assert hooks.ended == 1 and len(hooks.infos) == 24
    assert [i.step for i in hooks.infos] == [s for s in range(12) for _ in range(2)]
    assert [i.midpoint for i in hooks.infos[:4]] == [False, True, False, True]
    assert [i.evaluation for i in hooks.infos] == list(range(24))
    assert hooks.infos[1].t == pytest.approx(schedule[0] + (schedule[1] - schedule[0]) / 2)
    # rf2 under oscillation: Euler's alternation averaged, (g + 1) / 2 > 1, so both branches run
    assert all(i.branches == ("cond", "uncond") for i in hooks.infos)
    assert model.rows == [2 * N] * 24
    assert {i.batch for i in hooks.infos} == {N}
    # Euler: the text scale is 1 at odd steps from 20 % of the schedule (step 3 of 12), where only
    # the prompt rows run
    euler = Recorder()
    flow.sample_i2v(model, torch.zeros(shape), schedule, txt, y, txt[:1], y[:1], hooks=euler)
    assert [i.branches for i in euler.infos[:5]] == [("cond", "uncond")] * 3 + [
        ("cond",),
        ("cond", "uncond"),
    ]
