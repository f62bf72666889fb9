"""Sampling loop: CFG batch layout, RF-Solver (rf2) and its inversion, Linear Proportional Leap."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vidcli import flow
from vidcli.models.mmdit import MMDiT, MMDiTConfig, pack_latents

TRAJECTORY_TOL = 1e-3


@pytest.fixture(scope="module")
def vectors(reference_dir):
    folder = reference_dir / "vectors"
    meta = json.loads((folder / "mmdit_a.json").read_text())
    return meta, load_file(str(folder / "mmdit_a.safetensors"))


def _reference_model(vectors, name: str) -> MMDiT:
    meta, tensors = vectors
    model = MMDiT(MMDiTConfig.from_dict(meta["models"][name]["config"])).eval()
    prefix = f"{name}."
    model.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model


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
    model = RowCounter(_reference_model(vectors, "os2").forward_video)
    steps = []
    with torch.no_grad():
        out = flow.sample_i2v(
            model, z, schedule, t5[:N], clip[:N], t5[N:], clip[N:],
            guidance=flow.GuidanceConfig(text=opt["guidance"]),
            callback=lambda _i, x: steps.append(pack_latents(x, 2)),
        )  # fmt: skip
    assert model.rows == [2 * N] * opt["num_steps"]
    torch.testing.assert_close(
        torch.stack(steps), tensors[f"{case}.steps"], atol=TRAJECTORY_TOL, rtol=0
    )
    torch.testing.assert_close(out, tensors[f"{case}.out"], atol=TRAJECTORY_TOL, rtol=0)


def test_image_condition_keeps_3n_rows():
    N, shape = 2, (2, 1, 3, 2, 2)
    calls = RowCounter(lambda x, t, *a: torch.zeros_like(x))
    cond = flow.build_condition("i2v_head", shape, refs=torch.ones(2, 1, 1, 2, 2))
    txt, y = torch.zeros(N, 4, 8), torch.zeros(N, 6)
    flow.sample_i2v(calls, torch.randn(shape), [1.0, 0.5, 0.0], txt, y, txt[:1], y[:1], cond)
    assert calls.rows == [3 * N, 3 * N]
