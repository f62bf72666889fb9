"""Autoencoder losses: L1, LPIPS (VGG16 features), a 3-D PatchGAN with hinge loss.

LPIPS needs trained VGG16 + linear-head weights, which cannot be created here: `load_lpips` reads
them from a .safetensors file whose keys are torchvision's `features.N.*` for the VGG trunk and
`lin{0..4}.weight` for the heads; the `lpips` package's own names (`net.sliceK.N.*`,
`linI.model.1.weight`) are accepted too. `perceptual_loss` decides for train-ae: no LPIPS when its
weight is 0, else the weights from `[train] lpips_weights` or from the Hub cache
(`vidcli download lpips-vgg`), else a usage error: never a silent L1-only run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidcli.errors import UsageError
from vidcli.recipe import TrainSection

# VGG16 `features` layout: conv widths, "M" = max-pool; LPIPS taps the ReLU after each stage.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
LPIPS_WIDTHS = (64, 128, 256, 512, 512)
# Inputs in [-1, 1] are shifted/scaled to ImageNet statistics, as LPIPS does.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """Learned perceptual distance between image batches `(N, 3, H, W)` in [-1, 1] -> `(N,)`."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        width = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(width, item, 3, padding=1), nn.ReLU()]
                width = item
        self.features = nn.Sequential(*layers)
        for i, w in enumerate(LPIPS_WIDTHS):
            self.add_module(f"lin{i}", nn.Conv2d(w, 1, 1, bias=False))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_TAPS:
                taps.append(x)
            if i == LPIPS_TAPS[-1]:
                break
        return taps

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for i, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b), strict=True)):
            fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
            fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
            total = total + getattr(self, f"lin{i}")((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return total


LPIPS_ALIAS = "lpips-vgg"
"""The `vidcli download` alias whose file `perceptual_loss` finds in the Hub cache."""
LPIPS_FILE = "lpips_vgg.safetensors"

# The `lpips` package names the trunk `net.sliceK.N` (N is torchvision's index) and each head
# `linI.model.1` (after a dropout); torchvision's full VGG16 also has a classifier LPIPS never uses.
_KEY_RENAMES = (
    (re.compile(r"^net\.slice\d\.(\d+)\."), r"features.\1."),
    (re.compile(r"^(lin\d)\.model\.1\.weight$"), r"\1.weight"),
)
_UNUSED_KEYS = re.compile(r"^(classifier\.|scaling_layer\.)")


def load_lpips(path: str) -> LPIPS | None:
    """LPIPS with weights from `path`; None when `path` is "" (no perceptual loss)."""
    if not path:
        return None
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise UsageError(f"[train] lpips_weights = {path!r}: file not found")
    model = LPIPS()
    state = {}
    for key, value in load_file(path).items():
        for pattern, replacement in _KEY_RENAMES:
            key = pattern.sub(replacement, key)
        if not _UNUSED_KEYS.match(key):
            state[key] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UsageError(
            f"{path}: not an LPIPS-VGG weight file (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); expected keys features.N.weight/bias and lin0..4.weight"
        )
    return model.eval()


def perceptual_loss(train: TrainSection) -> LPIPS | None:
    """The LPIPS train-ae uses: None when `lpips_weight` is 0; a usage error when weights lack."""
    if train.lpips_weight == 0:
        return None
    path = train.lpips_weights or _cached_lpips_file()
    if not path:
        raise UsageError(
            f"[train] lpips_weight = {train.lpips_weight} needs LPIPS-VGG weights, and "
            "[train] lpips_weights is empty with none in the Hub cache",
            hint=f"vidcli download {LPIPS_ALIAS} (then train again), set train.lpips_weights="
            '"FILE.safetensors", or --set train.lpips_weight=0 to train with L1 only',
        )
    return load_lpips(path)


def _cached_lpips_file() -> str:
    """The `lpips-vgg` file if `vidcli download lpips-vgg` put it in the Hub cache, else ""."""
    from huggingface_hub import try_to_load_from_cache

    from vidcli.hub import ALIASES

    cached = try_to_load_from_cache(ALIASES[LPIPS_ALIAS].repo_id, LPIPS_FILE)
    return cached if isinstance(cached, str) else ""


class PatchDiscriminator3D(nn.Module):
    """Open-Sora's 3-D PatchGAN: strided k3 convs, BatchNorm3d + LeakyReLU(0.2) + Dropout(0.3).

    video (B, 3, T, H, W) -> patch logits (B, 1, T', H', W')
    """

    def __init__(self, base: int = 64):
        super().__init__()
        widths = (base, base * 2, base * 4, base * 8, base * 8, base * 8)
        strides = (2, 2, 1, (1, 2, 2), 1)
        layers: list[nn.Module] = [nn.Conv3d(3, widths[0], 3, 2, 1), nn.LeakyReLU(0.2)]
        for c_in, c_out, stride in zip(widths[:-1], widths[1:], strides, strict=True):
            layers += [
                nn.Conv3d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm3d(c_out),
                nn.LeakyReLU(0.2),
                nn.Dropout(0.3),
            ]
        layers.append(nn.Conv3d(widths[-1], 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def init_gan_weights(discriminator: nn.Module) -> None:
    """The PatchGAN initialisation both Open-Sora and Reducio use: N(0, 0.02) convolutions,
    N(1, 0.02) BatchNorm scales, zero BatchNorm shifts."""
    for m in discriminator.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5·(mean relu(1 - D(x)) + mean relu(1 + D(x̂)))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adversarial_step(
    loss: torch.Tensor,
    weight: torch.Tensor,
    frozen_d: nn.Module,
    recon: torch.Tensor,
    real: torch.Tensor,
    discriminator: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GAN phase once its weight is known: `loss` + weight · (−mean D(recon)) with the frozen
    copy of D, and one step of D's engine on the hinge loss of `real` against detached `recon`.

    Returns the generator's loss and the phase's metrics.
    """
    g_loss = -frozen_d(recon).mean()
    d_loss = hinge_d_loss(discriminator(real), discriminator(recon.detach()))
    discriminator.backward(d_loss)
    discriminator.step()
    metrics = {"g_loss": g_loss.item(), "d_loss": d_loss.item(), "gan_weight": float(weight)}
    return loss + weight * g_loss, metrics


def adaptive_gan_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, anchor: torch.Tensor, base: float
) -> torch.Tensor:
    """λ = base · clamp(‖∇_a rec‖ / (‖∇_a g‖ + 1e-4), 0, 1e4), `a` the tensor both losses share."""
    rec_grad = torch.autograd.grad(rec_loss, anchor, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, anchor, retain_graph=True)[0]
    return base * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()
