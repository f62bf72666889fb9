"""The mmdit_a reference vectors (Open-Sora 2.0's MMDiT and sampler) and models built from them."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vidcli.models.mmdit import MMDiT, MMDiTConfig


@functools.cache
def load_mmdit_vectors(vectors_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(meta JSON, tensors) of mmdit_a, read once per test session."""
    meta = json.loads((vectors_dir / "mmdit_a.json").read_text())
    return meta, load_file(str(vectors_dir / "mmdit_a.safetensors"))


def reference_model(vectors, name: str, **overrides) -> MMDiT:
    """The vectors' model `name` ("os2" or "flux") with its weights loaded strictly, eval mode."""
    meta, tensors = vectors
    model = MMDiT(MMDiTConfig.from_dict({**meta["models"][name]["config"], **overrides})).eval()
    prefix = f"{name}."
    model.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True
    )
    return model
