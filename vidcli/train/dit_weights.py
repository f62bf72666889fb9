"""The files of a trained DiT: `<stem>.safetensors` (+ config.json, LoRA adapter files) that
`load_dit` reads; train-dit's checkpoints and AE-Adapt's closed-form stage write them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidcli.models.mmdit import MMDiT
from vidcli.recipe import LoRASection
from vidcli.train.checkpoint import Digests, write_safetensors_hashed


def save_dit_weights(
    model: MMDiT,
    state: dict[str, torch.Tensor],
    folder: Path,
    stem: str,
    lora: LoRASection | None = None,
    written: Digests | None = None,
) -> None:
    """`<stem>.safetensors` (+ config.json for the model), loadable with `load_dit(folder)`.

    written: a checkpoint's digests; when given, `<stem>.safetensors` is hashed as it is written
    and recorded there (`write_manifest` then does not read it back).

    With LoRA, `model.safetensors` holds the merged weights and the adapters go to
    `lora.safetensors` (diffusers layout) and `lora-comfyui.safetensors`; `ema.safetensors`
    keeps the adapter layout the EMA resumes from, with alpha in its metadata (loaders merge).
    """
    from vidcli.models.mmdit.io import FORMAT

    metadata = {"format": FORMAT}
    if lora is not None and lora.rank:
        from vidcli.models import adapters
        from vidcli.train.lora import lora_alpha

        alpha = lora_alpha(lora)
        metadata[adapters.ALPHA_METADATA_KEY] = str(alpha)
        if stem == "model":
            pairs = adapters.adapter_weights_from_state(state, alpha)
            adapters.save_lora(pairs, folder / "lora.safetensors", "diffusers")
            adapters.save_lora(pairs, folder / "lora-comfyui.safetensors", "comfyui")
            state = adapters.merged_state(state, alpha)
    path = folder / f"{stem}.safetensors"
    if written is None:
        save_file(state, str(path), metadata=metadata)
    else:
        write_safetensors_hashed(state, path, folder, written, metadata)
    if stem == "model":
        config = {"format": FORMAT, **model.config.to_dict()}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
