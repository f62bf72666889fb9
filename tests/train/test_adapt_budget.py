"""AE-Adapt's compute accounting (FLOPs per step, steps per budget) and the closed-form
least-squares alignment (exact when AE B's latents are a linear map of A's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidcli.models.mmdit import MMDiT, MMDiTConfig, pack_latents
from vidcli.train.adapt import (
    fit_linear,
    least_squares_alignment,
    least_squares_flops,
    step_flops,
    steps_for_budget,
    swap_autoencoder,
)


def test_step_flops_counts_forward_and_backward_of_a_linear():
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32)
    forward = step_flops(lambda: layer(x))
    assert forward == 2 * 8 * 32 * 16
    # Backward: the weight gradient only (x needs none), one more matmul of the same size.
    assert step_flops(lambda: layer(x).sum().backward()) == 2 * forward


def test_frozen_body_step_costs_less_than_a_full_step():
    body, head = nn.Linear(64, 64), nn.Linear(64, 8)
    x = torch.randn(4, 64, requires_grad=False)
    full = step_flops(lambda: head(body(x)).sum().backward())
    body.requires_grad_(False)
    frozen = step_flops(lambda: head(body(x)).sum().backward())
    assert frozen < full


def test_steps_for_budget():
    assert steps_for_budget(1000, 100) == 10
    assert steps_for_budget(1000, 100, spent=250) == 7
    assert steps_for_budget(1000, 100, spent=1200) == 0
    with pytest.raises(ValueError):
        steps_for_budget(1000, 0)


def test_least_squares_flops_formula():
    assert least_squares_flops(4, 2, 10) == 2 * 10 * 16 + 2 * 10 * 8 + (2 * 64) // 3


def test_fit_linear_is_exact_on_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    x = torch.randn(200, 7, generator=gen, dtype=torch.float64)
    got = fit_linear(x, x @ m.T)
    torch.testing.assert_close(got, m, rtol=1e-9, atol=1e-9)


def _tiny_dit(in_channels: int, patch: int) -> MMDiT:
    torch.manual_seed(0)
    config = MMDiTConfig(
        in_channels=in_channels,
        patch_size=patch,
        hidden_size=32,
        num_heads=2,
        depth=1,
        depth_single_blocks=1,
        axes_dim=(4, 6, 6),
        context_in_dim=8,
        vec_in_dim=8,
    )
    return MMDiT(config).eval()


def test_least_squares_alignment_reproduces_the_source_through_a_linear_latent_map():
    """B's latent = Q A's latent (Q injective): the fitted swap embeds B's tokens exactly as the
    source embeds A's, and its output layer returns Q applied to the source's output."""
    gen = torch.Generator().manual_seed(1)
    c_a, c_b = 4, 12
    source = _tiny_dit(c_a, 1)
    q = torch.linalg.qr(torch.randn(c_b, c_b, generator=gen))[0][:, :c_a]  # (c_b, c_a)
    z_a = torch.randn(6, c_a, 2, 4, 4, generator=gen)
    z_b = torch.einsum("kc,nc...->nk...", q, z_a)
    model = swap_autoencoder(source, c_b, 1, seed=3)
    report = least_squares_alignment(model, source, z_b, z_a, ridge=0.0)
    assert report["fit_in"] < 1e-10
    with torch.no_grad():
        tok_a, tok_b = pack_latents(z_a, 1), pack_latents(z_b, 1)
        torch.testing.assert_close(model.img_in(tok_b), source.img_in(tok_a), rtol=1e-4, atol=1e-5)
        h = torch.randn(3, source.config.hidden_size, generator=gen)
        want = source.final_layer.linear(h) @ q.T
        torch.testing.assert_close(model.final_layer.linear(h), want, rtol=1e-4, atol=1e-5)
