"""AE losses against closed forms: hinge loss, adaptive GAN weight, LPIPS weight loading."""

import pytest
import torch
from safetensors.torch import save_file

from vidcli.errors import UsageError
from vidcli.train.losses import (
    LPIPS,
    PatchDiscriminator3D,
    adaptive_gan_weight,
    hinge_d_loss,
    load_lpips,
)


def test_hinge_loss_closed_form():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * ((0 + .5 + 2)/3 + (0 + 1 + 2)/3)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (3 * w).sum()  # grad (3, 3), norm 3*sqrt(2)
    g = (w**2).sum()  # grad (2, 4), norm sqrt(20)
    expected = 0.05 * (3 * 2**0.5) / (20**0.5 + 1e-4)
    assert adaptive_gan_weight(rec, g, w, 0.05).item() == pytest.approx(expected, rel=1e-6)


def test_discriminator_gives_patch_logits_for_videos():
    d = PatchDiscriminator3D(base=8).eval()
    logits = d(torch.randn(2, 3, 8, 64, 64))
    # strides 2, 2, 2, 1, (1, 2, 2), 1: T 8 -> 4 -> 2 -> 1, H 64 -> 32 -> 16 -> 8 -> 4
    assert logits.shape == (2, 1, 1, 4, 4)


def test_lpips_weights_round_trip_and_zero_distance(tmp_path):
    torch.manual_seed(0)
    model = LPIPS()
    for i in range(5):  # LPIPS heads are non-negative weights of squared feature differences
        getattr(model, f"lin{i}").weight.data.abs_()
    path = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_lpips(str(path))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loaded(x, x).abs().max().item() == 0.0
    assert (loaded(x, x.flip(-1)) > 0).all()
    torch.testing.assert_close(loaded(x, -x), model(x, -x))


def test_lpips_absent_or_wrong_file(tmp_path):
    assert load_lpips("") is None
    with pytest.raises(UsageError, match="file not found"):
        load_lpips(str(tmp_path / "nope.safetensors"))
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(UsageError, match="not an LPIPS-VGG weight file"):
        load_lpips(str(bad))
