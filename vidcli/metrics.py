"""Image and video quality metrics: PSNR and SSIM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vidcli.errors import ShapeError


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over all elements: 10 log10(range^2 / MSE); inf if equal."""
    mse = F.mse_loss(x.double(), y.double()).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian of `size` taps (Wang et al. 2004: 11 taps, sigma 1.5)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> float:
    """Mean structural similarity of two images/videos (..., H, W), per frame and channel.

    Gaussian-weighted local statistics over 'valid' windows, K1 = 0.01, K2 = 0.03 (Wang et al.
    2004); the mean over windows, frames and channels.
    """
    if x.shape != y.shape:
        raise ShapeError(f"SSIM of shapes {tuple(x.shape)} and {tuple(y.shape)}: must match")
    if min(x.shape[-2:]) < window:
        raise ShapeError(f"SSIM needs frames of at least {window} px, got {tuple(x.shape[-2:])}")
    frames = torch.stack((x.double(), y.double())).reshape(2, -1, 1, *x.shape[-2:])
    g = gaussian_window(window, sigma)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region only
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    a, b = frames[0], frames[1]
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean().item()
