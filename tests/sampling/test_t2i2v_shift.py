"""t2i2v's image stage takes its timestep shift from `flow.inference_shift_alpha`, the function
the video stage uses: spec §9's Flux t2i example (768px 16:9: 2304 tokens, 1 frame) α = 2.0667."""

from types import SimpleNamespace

import pytest
import torch

from vidcli import flow
from vidcli.sampling import t2i2v


class _FluxAE(torch.nn.Module):
    """Flux AE's shapes only: 16 channels, 8x spatial compression, images as 1 latent frame."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def latent_shape(self, frames, height, width):
        return 16, 1, height // 8, width // 8

    def decode(self, z):
        return torch.zeros(z.shape[0], 3, 1, z.shape[3] * 8, z.shape[4] * 8)


def _schedule_of_sample_images(monkeypatch, **kwargs):
    seen = {}

    def sample_distilled(model, noise, schedule, *args, **kw):
        seen["schedule"] = schedule
        return noise

    alphas = []
    real_alpha = flow.inference_shift_alpha
    monkeypatch.setattr(flow, "sample_distilled", sample_distilled)
    monkeypatch.setattr(
        flow, "inference_shift_alpha", lambda *a: alphas.append(real_alpha(*a)) or alphas[-1]
    )
    dit = SimpleNamespace(config=SimpleNamespace(patch_size=2), forward_video=None)
    tokens, pooled = torch.zeros(1, 4, 8), torch.zeros(1, 8)
    t2i2v.sample_images(dit, _FluxAE(), tokens, pooled, [0], (576, 1024), 8, 4.0, **kwargs)
    return seen["schedule"], alphas


def test_image_stage_shift_is_the_flow_inference_shift(monkeypatch):
    schedule, alphas = _schedule_of_sample_images(monkeypatch)
    assert len(alphas) == 1  # one call, for the latent 72x128 at patch 2
    assert alphas[0] == pytest.approx(2.0667, abs=1e-4)  # spec §9, Flux t2i 768px
    # lin(2304) = 1 + (2304 - 256)·2/3840 and √T = 1: the closed form, then the shifted levels.
    assert alphas[0] == pytest.approx(1 + (2304 - 256) * 2 / 3840, rel=1e-12)
    t = torch.linspace(1, 0, 9)
    assert schedule == (alphas[0] * t / (1 + (alphas[0] - 1) * t)).tolist()
    assert schedule == flow.inference_schedule(8, 2304, 1)  # the pre-refactor computation


def test_image_stage_flow_shift_overrides_the_resolution_shift(monkeypatch):
    schedule, alphas = _schedule_of_sample_images(monkeypatch, flow_shift=3.0)
    assert alphas == []
    assert schedule == flow.inference_schedule(8, 2304, 1, flow_shift=3.0)
