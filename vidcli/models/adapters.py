"""LoRA adapter files and merging: what train-dit writes and generate (and the demo export) reads.

A LoRA replaces a Linear's output `W x` with `W x + (alpha / r) * B (A x)`, A: (r, in),
B: (out, r) (Hu et al. 2021, eq. 3). Files hold only the A/B pairs:

- diffusers (`layout="diffusers"`): `transformer.<module>.lora_A.weight` / `.lora_B.weight`, with
  rank and alpha in the safetensors metadata key `lora_adapter_metadata` as
  `save_lora_weights` writes them (`transformer.r`, `transformer.lora_alpha`, ...).
- ComfyUI (`layout="comfyui"`): kohya's `lora_unet_<module with _>.lora_down.weight` (= A),
  `.lora_up.weight` (= B) and `.alpha`, ComfyUI's scale being alpha / rank.

Module names are the model's (for fused-qkv models these are Flux's original names, which is
what ComfyUI's Flux model uses, and what diffusers' Flux pipeline converts from the ComfyUI file;
the diffusers-layout file keeps these names rather than `FluxTransformer2DModel`'s).

A LoRA run's checkpoint holds the PEFT-wrapped model's state dict (`.base_layer.` /
`.lora_A.default.` keys); `plain_state` merges it back to plain keys. Wrapping a model with PEFT
for training lives in `vidcli.train.lora`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from torch import nn

from vidcli.errors import CheckpointError, UsageError
from vidcli.fileio import atomic_path

Layout = Literal["diffusers", "comfyui"]
LAYOUTS: tuple[str, ...] = ("diffusers", "comfyui")
DIFFUSERS_PREFIX = "transformer."
COMFY_PREFIX = "lora_unet_"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
ALPHA_METADATA_KEY = "vidcli.lora_alpha"
"""Metadata of a LoRA run's checkpoint weights in the adapter layout (ema.safetensors)."""


@dataclass
class LoRAWeights:
    """Adapter pairs by module name: A (r, in), B (out, r), and each module's alpha."""

    down: dict[str, torch.Tensor]
    up: dict[str, torch.Tensor]
    alpha: dict[str, float]

    def scale(self, module: str) -> float:
        """alpha / r of one module."""
        return self.alpha[module] / self.down[module].shape[0]

    @property
    def modules(self) -> list[str]:
        return sorted(self.down)


def adapter_weights_from_state(state: dict[str, torch.Tensor], alpha: float) -> LoRAWeights:
    """The A/B pairs from a PEFT-wrapped model's full state dict (what a checkpoint holds)."""
    down, up = {}, {}
    for key, value in state.items():
        if key.endswith(".lora_A.default.weight"):
            down[key.removesuffix(".lora_A.default.weight")] = value.float()
        elif key.endswith(".lora_B.default.weight"):
            up[key.removesuffix(".lora_B.default.weight")] = value.float()
    return LoRAWeights(down, up, {m: float(alpha) for m in down})


def base_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A PEFT-wrapped model's state dict without adapters, under the plain module names."""
    return {
        key.replace(".base_layer.", "."): value
        for key, value in state.items()
        if ".lora_A." not in key and ".lora_B." not in key
    }


def merged_state(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A PEFT-wrapped model's state dict with every adapter merged: plain MMDiT keys."""
    merged = dict(base_state(state))
    weights = adapter_weights_from_state(state, alpha)
    for module in weights.modules:
        key = f"{module}.weight"
        merged[key] = merged[key].float() + weights.scale(module) * delta(weights, module)
    return merged


def is_adapted(state: dict[str, torch.Tensor]) -> bool:
    """True for the state dict of a PEFT-wrapped model (a LoRA run's EMA file)."""
    return any(".lora_A." in key for key in state)


def delta(weights: LoRAWeights, module: str) -> torch.Tensor:
    """B @ A of one module: (out, in), without the alpha / r scale."""
    return weights.up[module].float() @ weights.down[module].float()


# ---------------------------------------------------------------------------------------------
# Files


def save_lora(weights: LoRAWeights, path: str | Path, layout: Layout = "diffusers") -> Path:
    """Write the adapter pairs in diffusers' or ComfyUI's key layout (safetensors, atomic)."""
    from safetensors.torch import save_file

    if layout not in LAYOUTS:
        raise UsageError(f"LoRA layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    tensors: dict[str, torch.Tensor] = {}
    metadata = {"format": "pt"}
    if layout == "diffusers":
        ranks = {weights.down[m].shape[0] for m in weights.modules}
        alphas = {weights.alpha[m] for m in weights.modules}
        if len(ranks) != 1 or len(alphas) != 1:
            raise UsageError("the diffusers layout needs one rank and one alpha for every module")
        for m in weights.modules:
            tensors[f"{DIFFUSERS_PREFIX}{m}.lora_A.weight"] = weights.down[m].contiguous()
            tensors[f"{DIFFUSERS_PREFIX}{m}.lora_B.weight"] = weights.up[m].contiguous()
        config = {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": weights.modules}
        metadata[METADATA_KEY] = json.dumps(
            {f"{DIFFUSERS_PREFIX}{k}": v for k, v in config.items()}, indent=2, sort_keys=True
        )
    else:
        for m in weights.modules:
            stem = COMFY_PREFIX + m.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = weights.down[m].contiguous()
            tensors[f"{stem}.lora_up.weight"] = weights.up[m].contiguous()
            tensors[f"{stem}.alpha"] = torch.tensor(weights.alpha[m], dtype=torch.float32)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_lora(path: str | Path, model: nn.Module) -> LoRAWeights:
    """Read a LoRA file in either layout (or PEFT's plain one) for `model`'s module names."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"LoRA file {path} not found")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if any(k.endswith(".lora_down.weight") for k in tensors):
        weights = _from_comfy(tensors, linears, path)
    else:
        weights = _from_peft(tensors, metadata, path)
    problems = []
    for m in weights.modules:
        if m not in linears:
            problems.append(f"{m}: no such Linear in the model")
        elif m not in weights.up:
            problems.append(f"{m}: lora_A without lora_B")
        else:
            expect = (linears[m].out_features, linears[m].in_features)
            got = (weights.up[m].shape[0], weights.down[m].shape[1])
            if got != expect or weights.up[m].shape[1] != weights.down[m].shape[0]:
                problems.append(f"{m}: B @ A is {got}, the layer is {expect}")
    if problems or not weights.down:
        listed = "; ".join(problems[:5]) or "no LoRA tensors found"
        raise CheckpointError(f"{path}: LoRA does not fit the DiT: {listed}")
    return weights


def _from_comfy(tensors: dict[str, torch.Tensor], linears: dict, path: Path) -> LoRAWeights:
    by_flat = {name.replace(".", "_"): name for name in linears}
    down, up, alpha = {}, {}, {}
    for key, value in tensors.items():
        stem, _, kind = key.partition(".")
        flat = stem.removeprefix(COMFY_PREFIX)
        module = by_flat.get(flat)
        if module is None:
            raise CheckpointError(f"{path}: {key} names no Linear of the DiT")
        if kind == "lora_down.weight":
            down[module] = value
        elif kind == "lora_up.weight":
            up[module] = value
        elif kind == "alpha":
            alpha[module] = float(value)
        else:
            raise CheckpointError(f"{path}: unexpected key {key} (kohya/ComfyUI LoRA layout)")
    for module, a in down.items():
        alpha.setdefault(module, float(a.shape[0]))  # no alpha stored: scale 1
    return LoRAWeights(down, up, alpha)


def _from_peft(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> LoRAWeights:
    config = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else {}
    stored_alpha = config.get(f"{DIFFUSERS_PREFIX}lora_alpha")
    down, up = {}, {}
    for key, value in tensors.items():
        name = key
        for prefix in (DIFFUSERS_PREFIX, "diffusion_model.", "base_model.model."):
            name = name.removeprefix(prefix)
        if name.endswith(".lora_A.weight"):
            down[name.removesuffix(".lora_A.weight")] = value
        elif name.endswith(".lora_B.weight"):
            up[name.removesuffix(".lora_B.weight")] = value
        else:
            raise CheckpointError(f"{path}: unexpected key {key} (diffusers/PEFT LoRA layout)")
    # Without metadata diffusers takes alpha = rank (scale 1); so do we.
    alpha = {m: float(stored_alpha if stored_alpha else a.shape[0]) for m, a in down.items()}
    return LoRAWeights(down, up, alpha)


# ---------------------------------------------------------------------------------------------
# Sampling with a LoRA


@torch.no_grad()
def merge_lora(model: nn.Module, weights: LoRAWeights, scale: float = 1.0) -> None:
    """W += scale * (alpha / r) * B @ A for every adapted module (in place, in W's dtype)."""
    _add_deltas(model, weights, scale)


@torch.no_grad()
def unmerge_lora(model: nn.Module, weights: LoRAWeights, scale: float = 1.0) -> None:
    """Undo `merge_lora` with the same weights and scale (exact up to float rounding)."""
    _add_deltas(model, weights, -scale)


def _add_deltas(model: nn.Module, weights: LoRAWeights, scale: float) -> None:
    modules = dict(model.named_modules())
    for name in weights.modules:
        layer = modules[name]
        update = scale * weights.scale(name) * delta(weights, name)
        layer.weight.add_(update.to(layer.weight.device, layer.weight.dtype))


def parse_lora_option(value: str) -> tuple[Path, float]:
    """`PATH[:scale]` of `generate --lora` -> (path, scale); the scale defaults to 1."""
    path, sep, scale = value.rpartition(":")
    if sep and path:
        try:
            return Path(path), float(scale)
        except ValueError:
            pass  # a colon inside the path (or no scale): the whole value is the path
    return Path(value), 1.0


def plain_state(path: Path, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights read from a checkpoint file, with adapters merged if it holds a LoRA run's EMA."""
    if not is_adapted(state):
        return state
    with safe_open(str(path), framework="pt", device="cpu") as f:
        alpha = (f.metadata() or {}).get(ALPHA_METADATA_KEY)
    if alpha is None:
        raise CheckpointError(f"{path}: LoRA weights without {ALPHA_METADATA_KEY} metadata")
    return merged_state(state, float(alpha))


def apply_lora_options(model: nn.Module, values: list[str]) -> list[tuple[Path, float]]:
    """Merge each `PATH[:scale]` of `generate --lora` into `model`, in order."""
    applied = []
    for value in values:
        path, scale = parse_lora_option(value)
        merge_lora(model, load_lora(path, model), scale)
        applied.append((path, scale))
    return applied
