"""The Inception-v3 of FID (pytorch-fid's `fid_inception_v3`, TF's 2015-12-05 graph ported):
2048-d pool features of images, with parameter names equal to its `pt_inception` weights.

It differs from torchvision's ImageNet Inception-v3 where the TF graph did: average pools that
do not count padding (Mixed_5*, 6*, 7b), a max pool in Mixed_7c's pool branch, and 1008 logits.
Images: uint8 (N, H, W, 3) -> [0, 1] -> bilinear resize to 299² (align_corners=False, no
antialias) -> 2x - 1, as pytorch-fid does. Shapes: N images, C channels, H, W.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vidcli.errors import CheckpointError, UsageError

SIZE = 299
FEATURES = 2048
LOGITS = 1008
CONVERT = (
    "python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('pt_inception-"
    "2015-12-05-6726825d.pth', weights_only=True), 'pt_inception.safetensors')\""
)
"""How to turn pytorch-fid's released weights (a plain tensor pickle) into the file vidcli reads."""


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TF's average pool ignores the padding: count_include_pad=False (pytorch-fid's FID blocks)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat((self.branch1x1(x), b5, bd, self.branch_pool(_avg_pool(x))), 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat((self.branch3x3(x), bd, F.max_pool2d(x, 3, stride=2)), 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for i in range(1, 6):
            bd = getattr(self, f"branch7x7dbl_{i}")(bd)
        return torch.cat((self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool(x))), 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat((b3, b7, F.max_pool2d(x, 3, stride=2)), 1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool, padding not counted) and Mixed_7c (`max_pool`: TF's graph)."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat((self.branch3x3_2a(b3), self.branch3x3_2b(b3)), 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat((self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)), 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat((self.branch1x1(x), b3, bd, self.branch_pool(pool)), 1)


class FIDInception(nn.Module):
    """forward(uint8 images (N, H, W, 3)) -> pool features (N, 2048) float32."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, LOGITS)  # in the weights file; FID uses the pool features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div(255)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))  # adaptive average pool to 1x1: (N, 2048)


def load_inception(path: Path | None, device: torch.device | str = "cpu") -> FIDInception:
    """The FID Inception with `pt_inception` weights from a .safetensors file (eval, fp32).

    BatchNorm's `num_batches_tracked` counters are not compared (the 2017 export has none).
    """
    if path is None or not Path(path).is_file() or Path(path).suffix != ".safetensors":
        what = "needs" if path is None else f"{path}: not"
        raise UsageError(
            f"--inception {what} a .safetensors file of pytorch-fid's FID Inception weights "
            "(pt_inception-2015-12-05)",
            hint=f"download pt_inception-2015-12-05-6726825d.pth from pytorch-fid's GitHub "
            f"release fid_weights, then convert it once: {CONVERT}",
        )
    model = FIDInception()
    sd = {k: v for k, v in load_file(str(path)).items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: not the FID Inception: {len(missing)} missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} misshaped {wrong[:3]}"
        )
    model.load_state_dict(sd, strict=False)
    return model.to(device).eval()


def inception_features(model: FIDInception):
    """A feature extractor for `vidcli.benchmark.fid`: uint8 (N, H, W, 3) -> (N, 2048) float64."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(images).to(device)).double().cpu().numpy()

    return extract
