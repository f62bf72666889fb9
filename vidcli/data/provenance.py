"""What made a set of latents, so that latents and autoencoders are never mixed up.

A provenance is a JSON-able dict with three parts:

- `ae`: the autoencoder's preset, a sha256 of its weights, its scaling (and shift) factor, its
  latent channels and, for a conditioned AE (Reducio), its content-frame convention (which frame,
  how the latent and the DiT's content condition are made: `models.content`). An AE built
  fresh from a preset (no `[ae] path`) has no stable weights, so its
  `weights_sha256` is "" and it is identified by preset and factors alone.
- `text`: the text encoder (backend, weights folders, tokens per prompt).
- `clip`: the frame and size settings the clips were cut with.

`prepare-data --encode` stores it in every shard's Parquet metadata and includes it in the shard
fingerprint; train-dit checks the shards against its `[ae]` and writes it beside each checkpoint
(`latents.json`); generate checks a checkpoint's against its own `[ae]`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from vidcli.errors import UsageError
from vidcli.models.content import CONTENT_CONVENTION, needs_content
from vidcli.recipe import AESection, TextSection

PROVENANCE_KEY = b"vidcli.provenance"
PROVENANCE_FILE = "latents.json"


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict: every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def autoencoder_provenance(preset: str, has_weights: bool, model: Any) -> dict[str, Any]:
    """The `ae` part for `model`, built from `preset` (`has_weights`: loaded from a file)."""
    shift = getattr(model, "shift_factor", None)
    part = {
        "preset": preset,
        "weights_sha256": weights_sha256(model) if has_weights else "",
        "scaling_factor": None if model.scaling_factor is None else float(model.scaling_factor),
        "shift_factor": None if shift is None else float(shift),
        "latent_channels": int(model.latent_channels),
    }
    # Only a conditioned AE records it: plain AEs' provenance, hence their shard fingerprints,
    # stay as they were (no re-encode of existing latents).
    if needs_content(model):
        convention = {"index": int(model.content_index), "frames": int(model.frames)}
        part["content_frame"] = convention | CONTENT_CONVENTION
    return part


def text_provenance(backend: str, paths: dict[str, str], max_length: int) -> dict[str, Any]:
    """The `text` part: which encoder, which weights, how many tokens per prompt (0: default)."""
    return {"backend": backend, "paths": dict(sorted(paths.items())), "max_length": max_length}


def recipe_provenance(ae: AESection, model: Any, text: TextSection) -> dict[str, Any]:
    """The `ae` and `text` parts for the recipe sections and the AE built from `ae`."""
    paths = {"minilm": text.minilm_path, "t5": text.t5_path, "clip": text.clip_path}
    return {
        "ae": autoencoder_provenance(ae.preset, bool(ae.path), model),
        "text": text_provenance(text.backend, paths, text.max_length),
    }


def autoencoder_mismatch(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why latents made by AE `recorded` do not belong to AE `current`, or None if they do."""
    keys = ["scaling_factor", "shift_factor", "latent_channels", "content_frame"]
    # Weights decide when both sides have them; a fresh preset has none to compare.
    keys.insert(0, "weights_sha256" if recorded.get("weights_sha256") else "preset")
    if recorded.get("weights_sha256") and not current.get("weights_sha256"):
        return f"they were made by trained weights ({recorded['preset']}), not a fresh preset"
    for key in keys:
        if recorded.get(key) != current.get(key):
            return f"{key} {_short(recorded.get(key))} != {_short(current.get(key))}"
    return None


def check_autoencoder(recorded: dict[str, Any] | None, current: dict[str, Any], what: str) -> None:
    """Raise a one-line UsageError when latents (`what`) were made by another AE."""
    if not recorded or "ae" not in recorded:
        return
    reason = autoencoder_mismatch(recorded["ae"], current)
    if reason is not None:
        raise UsageError(
            f"{what} were made by another autoencoder than [ae] (preset "
            f"{recorded['ae'].get('preset')!r} vs {current.get('preset')!r}: {reason})",
            hint="set [ae] to the autoencoder that made them, or re-encode with "
            "vidcli prepare-data --encode RECIPE",
        )


def check_checkpoint(dit_path: str | Path, ae: AESection, model: Any) -> None:
    """Refuse a train-dit checkpoint whose latents came from another AE than `ae` (`model`)."""
    folder = Path(dit_path)
    recorded = read_provenance(folder) if folder.is_dir() else None
    if recorded:
        current = autoencoder_provenance(ae.preset, bool(ae.path), model)
        check_autoencoder(recorded, current, f"the training latents of DiT {dit_path}")


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    """`folder/latents.json` (atomic)."""
    from vidcli.fileio import atomic_write_text

    atomic_write_text(folder / PROVENANCE_FILE, json.dumps(provenance, indent=2) + "\n")


def read_provenance(folder: Path) -> dict[str, Any] | None:
    """`folder/latents.json`, or None when `folder` has none (older checkpoints, exports)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UsageError(f"{path}: unreadable ({e})") from e


def _short(value: Any) -> str:
    text = repr(value)
    return text[:14] + "...'" if isinstance(value, str) and len(value) > 16 else text
