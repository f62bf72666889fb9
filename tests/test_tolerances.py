"""The tolerances of tests/tolerances.py hold across CPUs yet still catch real mistakes.

Each check takes a reference comparison that passes and breaks it in the smallest way a bug
could: one element off, or a wrong constant. The comparison must then fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from mmdit_vectors import load_mmdit_vectors
from safetensors.torch import load_file
from test_flow import run_trajectory, timestep_arguments
from tolerances import (
    ARGUMENT_ULPS,
    ELEMENTWISE_ATOL,
    assert_close_trig,
    assert_max_rel,
    assert_rel_l2,
)

from vidcli.models.mmdit.layers import timestep_embedding


@pytest.fixture(scope="module")
def mmdit_vectors(vectors_dir):
    return load_mmdit_vectors(vectors_dir)


def embedding_with_base(t: torch.Tensor, base: float, dim: int = 256) -> torch.Tensor:
    """timestep_embedding's float32 recipe with another frequency base."""
    half = dim // 2
    freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float32) / half)
    args = (1000.0 * t)[:, None].float() * freqs[None]
    return torch.cat((torch.cos(args), torch.sin(args)), dim=-1)


def test_trig_bound_is_two_ulps_of_the_argument():
    # at the largest timestep argument (1000) the bound is 2.4e-4: a 1e-3 error still fails
    assert pytest.approx(2.4e-4, rel=0.02) == ELEMENTWISE_ATOL + ARGUMENT_ULPS * 1000
    assert torch.finfo(torch.float32).eps * 2 == ARGUMENT_ULPS


def test_trig_tolerance_catches_one_element_off(mmdit_vectors):
    _, tensors = mmdit_vectors
    t, want = tensors["tsemb.in.t"], tensors["tsemb.out"]
    args = timestep_arguments(t)
    got = timestep_embedding(t, 256)
    assert_close_trig(got, want, args)
    worst = args.abs().argmax()  # where the bound is loosest
    broken = got.clone()
    broken.view(-1)[worst] += 1e-3
    with pytest.raises(AssertionError, match="1 elements off"):
        assert_close_trig(broken, want, args)


@pytest.mark.parametrize("base", [10_001.0, 1_000.0])
def test_trig_tolerance_catches_a_wrong_base(mmdit_vectors, base):
    _, tensors = mmdit_vectors
    t = tensors["tsemb.in.t"]
    assert_close_trig(embedding_with_base(t, 10_000.0), tensors["tsemb.out"], timestep_arguments(t))
    with pytest.raises(AssertionError, match="elements off"):
        assert_close_trig(embedding_with_base(t, base), tensors["tsemb.out"], timestep_arguments(t))


def test_max_rel_catches_one_forward_element_off(mmdit_vectors):
    _, tensors = mmdit_vectors
    want = tensors["fwd_os2.out"]
    broken = want.clone()
    broken.view(-1)[0] += 1e-3 * want.abs().max()
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_max_rel(broken, want)


def test_max_rel_catches_the_other_rope_pairing(mmdit_vectors):
    # the reference's output had RoPE paired interleaved instead of half-split: a real bug
    _, tensors = mmdit_vectors
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_max_rel(tensors["fwd_os2.out_if_interleaved_rope"], tensors["fwd_os2.out"])


def test_max_rel_catches_one_trajectory_step_off(mmdit_vectors):
    out, steps, tensors = run_trajectory(mmdit_vectors, "traj_t2v")
    assert_max_rel(out, tensors["traj_t2v.out"])
    broken = steps.clone()
    broken[3].view(-1)[7] += 1e-2
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_max_rel(broken, tensors["traj_t2v.steps"])


def test_dcae_comparisons_catch_one_element_off(vectors_dir):
    vectors = load_file(str(vectors_dir / "video_dcae_a.safetensors"))
    want = vectors["out.recon"]
    broken = want.clone()
    broken.view(-1)[123] += 1e-3 * want.abs().max()
    # relative L2 over 98k elements alone would let one element drift by ~1 %: the max-norm
    # check the DC-AE tests add is what catches it
    assert_rel_l2(broken, want)
    with pytest.raises(AssertionError, match="max abs diff"):
        assert_max_rel(broken, want)
    with pytest.raises(AssertionError, match="relative L2"):
        assert_rel_l2(want * 1.001, want)
