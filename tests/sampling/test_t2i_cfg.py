"""t2i2v's image stage with a DiT that has no guidance embedding (the Reducio demo's image stage,
the bundled demo MMDiT at one latent frame): text CFG against the negative prompt, 2N rows per
step, v̂ = v_u + g·(v_c − v_u); a distilled DiT keeps one row per image."""

from types import SimpleNamespace

import pytest
import torch

from vidcli.errors import ShapeError
from vidcli.sampling import t2i2v


class _ImageAE(torch.nn.Module):
    """Identity-like AE: 3 latent channels, no compression, decode = z / 10."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def latent_shape(self, frames, height, width):
        return 3, 1, height, width

    def decode(self, z):
        return z / 10


class _TextDiT:
    """Velocity = the mean of each row's text tokens (so prompt and negative rows differ)."""

    def __init__(self, guidance_embed):
        self.config = SimpleNamespace(patch_size=1, guidance_embed=guidance_embed)
        self.rows = []

    def forward_video(self, x, t, txt, y, *args, **kwargs):
        self.rows.append(x.shape[0])
        return txt.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand_as(x).to(x.dtype)


def _noise(seed, shape=(3, 1, 4, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_non_distilled_image_dit_samples_with_text_cfg():
    dit, ae = _TextDiT(guidance_embed=False), _ImageAE()
    tokens = torch.full((2, 5, 8), 0.1)  # v_c = 0.1
    pooled = torch.zeros(2, 8)
    negative = (torch.full((1, 5, 8), -0.1), torch.zeros(1, 8))  # v_u = -0.1
    images = t2i2v.sample_images(
        dit, ae, tokens, pooled, [3, 4], (4, 4), 4, 3.0, flow_shift=1.0, negative=negative
    )
    # Every step evaluates the prompt and the negative rows: 2N = 4.
    assert dit.rows == [4] * 4
    # The velocity is constant, v̂ = -0.1 + 3·(0.1 + 0.1) = 0.5; Euler from t = 1 to 0: x0 = ε − v̂.
    want = torch.stack([(_noise(s) - 0.5)[:, 0] / 10 for s in (3, 4)])
    torch.testing.assert_close(images, want.clamp(-1, 1))


def test_guidance_one_is_the_conditional_velocity():
    dit, ae = _TextDiT(guidance_embed=False), _ImageAE()
    tokens, pooled = torch.full((1, 5, 8), 0.2), torch.zeros(1, 8)
    negative = (torch.full((1, 5, 8), -0.3), torch.zeros(1, 8))
    images = t2i2v.sample_images(
        dit, ae, tokens, pooled, [0], (4, 4), 2, 1.0, flow_shift=1.0, negative=negative
    )
    assert dit.rows == [1, 1]  # g = 1: no negative rows
    torch.testing.assert_close(images, ((_noise(0) - 0.2)[:, 0] / 10)[None])


def test_non_distilled_image_dit_needs_the_negative_prompt():
    dit = _TextDiT(guidance_embed=False)
    tokens, pooled = torch.zeros(1, 5, 8), torch.zeros(1, 8)
    with pytest.raises(ShapeError, match="negative prompt"):
        t2i2v.sample_images(dit, _ImageAE(), tokens, pooled, [0], (4, 4), 2, 3.0)


def test_distilled_image_dit_keeps_one_row_per_image(monkeypatch):
    seen = {}

    def sample_distilled(model, noise, schedule, txt, y, guidance, callback=None):
        seen["guidance"] = guidance
        return noise

    monkeypatch.setattr(t2i2v.flow, "sample_distilled", sample_distilled)
    dit = _TextDiT(guidance_embed=True)
    tokens, pooled = torch.zeros(1, 5, 8), torch.zeros(1, 8)
    negative = (torch.zeros(1, 5, 8), torch.zeros(1, 8))
    t2i2v.sample_images(dit, _ImageAE(), tokens, pooled, [0], (4, 4), 2, 4.0, negative=negative)
    assert seen["guidance"] == 4.0


class _ClipAE(_ImageAE):
    """_ImageAE for clips: one latent frame per frame."""

    def latent_shape(self, frames, height, width):
        return 3, frames, height, width


def test_a_clip_image_stage_samples_every_frame_and_gives_the_asked_one():
    dit, ae = _TextDiT(guidance_embed=False), _ClipAE()
    tokens, pooled = torch.full((1, 5, 8), 0.1), torch.zeros(1, 8)
    negative = (torch.full((1, 5, 8), -0.1), torch.zeros(1, 8))
    args = (dit, ae, tokens, pooled, [5], (4, 4), 4, 3.0, 1.0)
    images = t2i2v.sample_images(*args, negative=negative, frames=3, index=1)
    # As above, v̂ = 0.5 everywhere; the image is frame 1 of the 3-frame clip's noise − v̂.
    want = (_noise(5, (3, 3, 4, 4)) - 0.5)[:, 1] / 10
    torch.testing.assert_close(images, want[None].clamp(-1, 1))
    with pytest.raises(ShapeError, match="image frame 3 of a 3-frame clip"):
        t2i2v.sample_images(*args, negative=negative, frames=3, index=3)


def test_a_conditioned_video_ae_takes_the_centre_frame_of_the_image_stage_clip(monkeypatch):
    seen = {}

    def sample_images(*args, **kwargs):
        seen.update(kwargs)
        return torch.zeros(1, 3, 4, 4)

    monkeypatch.setattr(t2i2v, "sample_images", sample_images)
    monkeypatch.setattr(t2i2v, "condition_latent", lambda ae, image, frames: image)
    dit = SimpleNamespace(config=SimpleNamespace(patch_size=1))
    stage = t2i2v.ImageStage(dit, SimpleNamespace(spatial_compression=1), 4, 1.0, 2, frames=16)
    tokens, pooled = torch.zeros(1, 5, 8), torch.zeros(1, 8)
    # Reducio's content frame is the centre one, (16 − 1) // 2; an i2v condition is frame 0.
    for video_ae, index in ((SimpleNamespace(conditioned=True), 7), (SimpleNamespace(), 0)):
        t2i2v.first_frame_conditions(stage, video_ae, tokens, pooled, [0], (16, 4, 4))
        assert (seen["frames"], seen["index"]) == (16, index)
