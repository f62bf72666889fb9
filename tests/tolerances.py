"""How tests compare our float32 results with reference vectors and closed forms.

The reference vectors were computed on one CPU; CI runs on Intel (AMX) or AMD machines whose
vectorised math and matmul kernels round differently. Every tolerance here follows from the
float32 error of the computation being checked, not from the machine that made the vector:

- Elementwise ops on O(1) inputs: absolute 1e-6 (a few float32 ulps of values near 1).
- Trigonometry of large arguments (timestep embeddings: cos/sin of 1000·t·freq): the argument is
  rounded to float32 before the call, and range reduction may lose another ulp of it, so results
  may differ by up to 2 ulps of the argument: `1e-6 + 2**-22 · |arg|` per element.
- Long reductions (a network's forward pass, a sampling trajectory, an autoencoder): relative L2
  of the whole tensor, or the largest error relative to the largest value, at 1e-4 (the
  vector JSONs' suggested tolerance). Summation order changes each output by ~sqrt(n) ulps.

`tests/test_tolerances.py` shows that each of these still fails on a one-element perturbation or
a wrong constant.
"""

from __future__ import annotations

import torch

ELEMENTWISE_ATOL = 1e-6
"""Absolute tolerance for elementwise float32 ops on values of order 1."""

ARGUMENT_ULPS = 2**-22
"""Per unit of |argument|: 2 float32 ulps (rounding the argument, then range reduction)."""

REDUCTION_RTOL = 1e-4
"""Relative tolerance (L2 or max-norm) for results of long float32 reductions."""


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want|| over the whole tensor, in float64."""
    got, want = got.double(), want.double()
    return ((got - want).norm() / want.norm()).item()


def assert_rel_l2(got: torch.Tensor, want: torch.Tensor, tol: float = REDUCTION_RTOL) -> None:
    """The whole tensor matches to `tol` relative L2 (for outputs of long reductions)."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = rel_l2(got, want)
    assert err <= tol, f"relative L2 error {err:.3g} > {tol:.3g}"


def assert_max_rel(got: torch.Tensor, want: torch.Tensor, tol: float = REDUCTION_RTOL) -> None:
    """max |got - want| <= tol · max(1, max |want|): no single element strays (a forward pass)."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs().max().item()
    bound = tol * max(1.0, want.abs().max().item())
    assert err <= bound, f"max abs diff {err:.3g} > {bound:.3g}"


def assert_close_trig(got: torch.Tensor, want: torch.Tensor, arguments: torch.Tensor) -> None:
    """sin/cos results match to `ELEMENTWISE_ATOL + ARGUMENT_ULPS · |argument|` element by element.

    arguments: the angles, same shape as `got`, computed in float64.
    """
    assert got.shape == want.shape == arguments.shape
    err = (got.double() - want.double()).abs()
    bound = ELEMENTWISE_ATOL + ARGUMENT_ULPS * arguments.double().abs()
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (
        f"{int((err > bound).sum())} elements off; worst at flat index {worst.item()}: "
        f"diff {err.flatten()[worst].item():.3g} > {bound.flatten()[worst].item():.3g}"
    )
