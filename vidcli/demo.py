"""The bundled demo model: where it lives and how a training run becomes it.

`vidcli generate` with no recipe samples from `vidcli/assets/demo/` (recipe.toml, ae/, dit/).
Re-creating it (README, "The demo model"):

    vidcli train-ae recipes/demo-ae.toml
    python -m vidcli.demo ae runs/demo-ae/checkpoints/latest
    vidcli train-dit recipes/demo-dit.toml
    python -m vidcli.demo dit runs/demo-dit/checkpoints/latest

`ae` exports the EMA weights with a scaling factor measured on the training clips (so the DiT
sees unit-variance latents); `dit` exports the EMA weights in bfloat16 to keep the package small.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from vidcli.errors import UsageError

DEMO_DIR = Path(__file__).parent / "assets" / "demo"
DEMO_RECIPE = DEMO_DIR / "recipe.toml"


def _ema_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    for name in ("ema.safetensors", "model.safetensors"):
        if (checkpoint / name).is_file():
            return load_file(str(checkpoint / name))
    raise UsageError(f"{checkpoint}: no ema.safetensors or model.safetensors (not a checkpoint)")


@torch.no_grad()
def export_autoencoder(checkpoint: Path, out_dir: Path = DEMO_DIR / "ae", clips: int = 64) -> Path:
    """The checkpoint's EMA autoencoder, with scaling_factor = std of its latents on its data."""
    import dataclasses

    from vidcli.models.dcae import load_autoencoder, save_autoencoder
    from vidcli.recipe import load_recipe
    from vidcli.train.data import video_dataset

    model = load_autoencoder(checkpoint)
    model.load_state_dict(_ema_state(checkpoint))
    data = load_recipe(checkpoint / "recipe.toml").data
    dataset = video_dataset(data)
    latents = [model.encoder(dataset[i]["video"][None]) for i in range(min(clips, len(dataset)))]
    scale = float(torch.cat(latents).std())
    export = type(model)(dataclasses.replace(model.config, scaling_factor=scale))
    export.load_state_dict(model.state_dict())
    return save_autoencoder(export, out_dir)


def export_dit(checkpoint: Path, out_dir: Path = DEMO_DIR / "dit") -> Path:
    """The checkpoint's EMA DiT in bfloat16 (loaders upcast it to float32)."""
    from vidcli.models.mmdit import load_dit, save_dit

    model = load_dit(checkpoint)
    model.load_state_dict(_ema_state(checkpoint))
    return save_dit(model.to(torch.bfloat16), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vidcli.demo", description=__doc__)
    parser.add_argument("part", choices=("ae", "dit"))
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args(argv)
    exporter = export_autoencoder if args.part == "ae" else export_dit
    out = exporter(args.checkpoint.resolve())
    config = json.loads((out / "config.json").read_text())
    print(out, f"scaling_factor={config.get('scaling_factor')}" if args.part == "ae" else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
