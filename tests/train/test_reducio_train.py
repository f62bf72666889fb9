"""train-ae on a Reducio-VAE: upstream's loss terms against hand-computed values, the 3-D
PatchGAN's shapes, the adaptive weight against the full model's gradients, and a short run."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tiny_models import MICRO_REDUCIO, micro_reducio
from tiny_runs import REPO, recipe_args, subprocess_env

from vidcli.models import load_autoencoder
from vidcli.train import reducio_ae as ra


def clips(size: int = 16) -> torch.Tensor:
    return torch.rand(2, 3, 4, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_kl_by_hand():
    # ½(1 + 1 − 1 − 0) + ½(0 + 4 − 1 − ln 4) for the one sample; the second sample is the prior.
    mean = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    expected = (0.5 + 0.5 * (3.0 - math.log(4.0))) / 2
    assert ra.kl_loss(mean, logvar).item() == pytest.approx(expected)


def test_outlier_penalty_by_hand():
    # One spike v in a 4x4 frame: mean v/16, unbiased std v/4, so it exceeds mean + 3 std by
    # 3v/16; averaged over the 16 pixels: 3v/256. Values below the bound cost nothing.
    frame = torch.zeros(1, 1, 1, 4, 4)
    frame[..., 2, 1] = 16.0
    assert ra.outlier_penalty(frame).item() == pytest.approx(3 * 16 / 256)
    assert ra.outlier_penalty(-frame).item() == 0.0  # one-sided, as upstream
    assert ra.outlier_penalty(torch.randn(1, 3, 2, 4, 4).clamp(-1, 1) * 0.1).item() == 0.0


def test_the_loss_is_l1_plus_weighted_kl_and_outlier_terms_on_a_fixed_batch():
    model, x = micro_reducio().train(), clips()
    engine = SimpleNamespace(module=model)
    train = SimpleNamespace(lpips_weight=0.0, gan_start=-1, gan_weight=0.05)
    torch.manual_seed(7)
    loss, metrics = ra.reducio_loss(engine, x, 0, train, None, None, lambda m: m)
    # The same step by hand: ε from the same seed, the layer-normed sample, the centre frame.
    torch.manual_seed(7)
    mean, logvar = model.posterior(x)
    sample = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    z = F.layer_norm(sample, sample.shape[1:], eps=1e-5)
    x_hat = model.decode(z, content=x[:, :, 1])
    l1 = (x_hat - x).abs().mean()
    kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3, 4)).mean()
    mu, sd = x_hat.mean(dim=(3, 4), keepdim=True), x_hat.std(dim=(3, 4), keepdim=True)
    outlier = (x_hat - mu - 3 * sd).clamp(min=0).mean()
    torch.testing.assert_close(loss, l1 + 1e-6 * kl + outlier)
    assert metrics["l1"] == pytest.approx(l1.item()) and metrics["kl"] == pytest.approx(kl.item())
    assert metrics["outlier"] == pytest.approx(outlier.item())


def test_init_posterior_starts_the_posterior_nearly_deterministic():
    model, x = micro_reducio(), clips()
    embed = model.config.embed_dim
    default_bias = model.quant_conv.bias[embed:].detach().clone()
    mean_before, logvar_before = model.posterior(x)
    ra.init_posterior(model)
    mean, logvar = model.posterior(x)
    torch.testing.assert_close(mean, mean_before, rtol=0, atol=0)  # the means are untouched
    # Only the log-variance bias changes: every channel's log-variance shifts by −6 − bias.
    shift = (ra.INIT_LOGVAR - default_bias)[None, :, None, None, None]
    torch.testing.assert_close(logvar, logvar_before + shift, rtol=0, atol=1e-5)
    assert torch.exp(0.5 * logvar).max().item() < 0.1


def test_discriminator_matches_upstreams_layout():
    d = ra.ReducioDiscriminator3D()
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [tuple(c.kernel_size) for c in convs] == [
        (4, 4, 4),
        (4, 4, 4),
        (3, 4, 4),
        (1, 4, 4),
        (1, 4, 4),
    ]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in d.modules()) == 3
    assert d(torch.zeros(1, 3, 16, 64, 64)).shape == (1, 1, 2, 6, 6)


def test_discriminator_rate_is_a_tenth_then_ramps_to_one():
    rates = [ra.discriminator_multiplier(s) for s in (0, 5000, 5500, 6000, 10**6)]
    assert rates == pytest.approx([0.1, 0.1, 0.55, 1.0, 1.0])


def test_adaptive_weight_uses_the_gradients_at_the_decoders_last_conv():
    model, x = micro_reducio().train(), clips(32)  # the PatchGAN needs 32 px
    d = ra.ReducioDiscriminator3D(base=8).eval()
    x_hat, _, _, features = ra.forward(model, x, torch.zeros(2, 4, 2, 16, 16))
    weight = ra.adaptive_weight(
        model.decoder.conv_out,
        features,
        lambda y: (y - x).abs().mean(),
        lambda y: -d(y).mean(),
        0.05,
    )
    w = model.decoder.conv_out.weight
    rec_grad = torch.autograd.grad((x_hat - x).abs().mean(), w, retain_graph=True)[0]
    g_grad = torch.autograd.grad(-d(x_hat).mean(), w)[0]
    expected = 0.05 * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4)
    torch.testing.assert_close(weight, expected)


def test_train_ae_lowers_the_loss_then_runs_the_gan_and_saves_a_loadable_vae(tmp_path):
    # The micro model as an [ae] table: --set takes TOML scalars, not tables.
    recipe = tmp_path / "micro.toml"
    recipe.write_text(
        f"include = {json.dumps(str(REPO / 'recipes' / 'reducio-tiny.toml'))}\n[ae]\n"
        f"overrides = {_toml(MICRO_REDUCIO)}\n"
    )
    values = {
        "data.source": "synthetic:shapes:4",
        "data.cache_dir": str(tmp_path / "cache"),
        "data.num_frames": 4,
        "data.height": 32,
        "data.width": 32,
        "train.output": str(tmp_path / "run"),
        "train.max_steps": 8,
        "train.lr": 2e-3,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.gan_start": 6,
        "train.log_every": 1,
        "train.ckpt_every": 8,
    }
    done = subprocess.run(
        [sys.executable, "-m", "vidcli", "train-ae", *recipe_args(str(recipe), values)],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    loss = [r["loss"] for r in records]
    assert sum(loss[3:6]) / 3 < loss[0], loss
    assert "d_loss" not in records[4] and records[6]["d_loss"] > 0, records
    vae = load_autoencoder(tmp_path / "run/checkpoints/step-0000008")
    assert vae.conditioned and vae.latent_shape(4, 32, 32) == (4, 2, 16, 16)
    # Trained from scratch: the posterior started at INIT_LOGVAR (8 Adam steps of 2e-3 since).
    logvar_bias = vae.quant_conv.bias[vae.config.embed_dim :]
    assert (logvar_bias - ra.INIT_LOGVAR).abs().max().item() < 0.1, logvar_bias


def _toml(value) -> str:
    """A TOML inline value of dicts, lists and numbers."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def test_train_ae_refuses_single_frame_steps_on_a_reducio_vae(tmp_path):
    values = {"train.output": str(tmp_path / "run"), "data.image_ratio": 0.5}
    done = subprocess.run(
        [sys.executable, "-m", "vidcli", "train-ae", *recipe_args("reducio-tiny.toml", values)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert done.returncode == 2
    assert "image_ratio = 0.5: reducio-tiny trains on 16-frame clips only" in done.stderr
