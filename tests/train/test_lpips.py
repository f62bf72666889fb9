"""LPIPS: our module against the `lpips` package and a functional re-derivation, and train-ae's
refusal to drop the perceptual term silently.

The `lpips` package builds its trunk with torchvision, whose wheels do not import beside the CPU
torch 2.13 used here (its compiled ops do not match). The comparison therefore hands the package a
stand-in `torchvision.models.vgg16` with torchvision's layer layout (config "D") and random
weights; everything else (scaling, normalisation, heads, averaging, the trained v0.1 head weights)
is the package's own code and data.
"""

import importlib.util
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tiny_runs import recipe_args, subprocess_env, tiny_ae_values
from torch import nn

from vidcli.errors import UsageError
from vidcli.hub import ALIASES
from vidcli.recipe import TrainSection
from vidcli.train import losses
from vidcli.train.losses import LPIPS, load_lpips, perceptual_loss

VGG16_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def stand_in_torchvision() -> types.ModuleType:
    """A `torchvision` module whose only model is VGG16 (torchvision's `features` layout)."""

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            layers, width = [], 3
            for item in VGG16_D:
                if item == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(width, item, kernel_size=3, padding=1), nn.ReLU(True)]
                    width = item
            self.features = nn.Sequential(*layers)

    def vgg16(pretrained=False, **kwargs):
        assert not pretrained, "the test runs without ImageNet weights"
        return VGG()

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(vgg16=vgg16)
    return tv


@pytest.mark.skipif(importlib.util.find_spec("lpips") is None, reason="lpips is not installed")
def test_matches_the_lpips_package_on_the_same_weights(tmp_path, monkeypatch):
    tv = stand_in_torchvision()
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips

    torch.manual_seed(0)
    # pnet_rand: random trunk (from the stand-in); the heads are the package's trained v0.1 file.
    theirs = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
    heads = theirs.lins[0].model[1].weight
    assert heads.min() >= 0 and heads.abs().sum() > 0  # trained, non-negative weights

    # Their state dict under their names, through our loader (which renames the keys).
    path = tmp_path / "lpips_package_layout.safetensors"
    state = theirs.state_dict()  # `lins.I` repeats `linI` (a ModuleList view): saved once
    save_file({k: v.contiguous() for k, v in state.items() if not k.startswith("lins.")}, str(path))
    ours = load_lpips(str(path))

    x = torch.rand(3, 3, 64, 64) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    expected = theirs(x, y).flatten()
    torch.testing.assert_close(ours(x, y), expected, rtol=1e-5, atol=1e-7)
    assert (expected > 0).all()


def test_matches_the_lpips_formula_written_out():
    """d(x, y) = Σ_l mean_hw Σ_c w_lc (x̂_lchw - ŷ_lchw)², x̂ unit-normalised over channels."""
    torch.manual_seed(1)
    model = LPIPS()
    for i in range(5):
        getattr(model, f"lin{i}").weight.data.uniform_(0, 1)
    state = model.state_dict()

    def features(img):
        h = (img - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]
        ).view(1, 3, 1, 1)
        taps, index = [], 0
        for item in VGG16_D[:-1]:  # relu5_3 is the last tap: the final pool is never reached
            if item == "M":
                h = F.max_pool2d(h, 2)
                index += 1
                continue
            weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
            h = F.relu(F.conv2d(h, weight, bias, padding=1))
            index += 2
            if index in (4, 9, 16, 23, 30):  # after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
                taps.append(h)
        return taps

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = torch.rand(2, 3, 32, 32) * 2 - 1
    total = torch.zeros(2)
    for i, (fx, fy) in enumerate(zip(features(x), features(y), strict=True)):
        fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = state[f"lin{i}.weight"].view(1, -1, 1, 1)
        total += (w * (fx - fy) ** 2).sum(1).mean(dim=(1, 2))
    torch.testing.assert_close(model(x, y), total, rtol=1e-5, atol=1e-7)


def test_no_weights_is_an_error_not_an_l1_only_run(monkeypatch, tmp_path):
    assert perceptual_loss(TrainSection(lpips_weight=0.0)) is None
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UsageError) as err:
        perceptual_loss(TrainSection(lpips_weight=0.5))
    assert "lpips_weight = 0.5" in str(err.value)
    assert "vidcli download lpips-vgg" in err.value.hint

    # After `vidcli download lpips-vgg`, the file in the Hub cache is found with no setting.
    repo = tmp_path / "hub" / "models--nikhilr01--sen-bridge-weights"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    model = LPIPS()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(snapshot / "lpips_vgg.safetensors"),
    )
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    found = perceptual_loss(TrainSection(lpips_weight=0.5))
    torch.testing.assert_close(found(x, -x), model(x, -x))
    # ... which is exactly the one file the alias downloads.
    assert ALIASES[losses.LPIPS_ALIAS].include == (losses.LPIPS_FILE,)


@pytest.mark.slow  # one `vidcli train-ae` process, stopped before training
def test_train_ae_exits_2_without_lpips_weights(tmp_path):
    env = subprocess_env(
        OMP_NUM_THREADS="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1"
    )
    values = {**tiny_ae_values(tmp_path, "synthetic:shapes:2"), "train.lpips_weight": 0.5}
    args = recipe_args("demo-ae.toml", values)
    done = subprocess.run(
        [sys.executable, "-m", "vidcli", "train-ae", *args],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "vidcli download lpips-vgg" in done.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
