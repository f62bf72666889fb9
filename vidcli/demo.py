"""The bundled demo model: where it lives and how a training run becomes it.

`vidcli generate` with no recipe samples from `vidcli/assets/demo/` (recipe.toml, ae/, dit/).
Re-creating it (README, "The demo model"):

    vidcli train-ae recipes/demo-ae.toml
    python -m vidcli.demo ae runs/demo-ae/checkpoints/latest --overwrite-package
    vidcli train-dit recipes/demo-dit.toml
    python -m vidcli.demo dit runs/demo-dit/checkpoints/latest --overwrite-package

`ae` exports the EMA weights with a scaling factor measured on the training clips (so the DiT
sees unit-variance latents); `dit` exports the EMA weights in bfloat16 to keep the package small.
The export goes to `--out DIR`; replacing the installed package's own demo takes the explicit
`--overwrite-package`, so a stray run cannot clobber what `vidcli generate` uses.

The Reducio demo (`recipes/reducio-demo.toml`, weights in `vidcli/assets/reducio-demo/`) is
exported the same way: `reducio-ae` writes the EMA Reducio-VAE (fp32, no scaling: its latents are
layer-normed), `reducio-dit` the EMA motion-latent DiT in bfloat16 (docs/reducio.md).
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
REDUCIO_DEMO_DIR = Path(__file__).parent / "assets" / "reducio-demo"
"""The Reducio demo's weights (`ae/`, `dit/`), read by recipes/reducio-demo.toml."""


def _ema_state(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's EMA (else raw) weights under the model's plain keys: a LoRA run's EMA
    file holds the adapter layout, merged here as `generate` merges it."""
    from vidcli.models.adapters import plain_state

    for name in ("ema.safetensors", "model.safetensors"):
        if (checkpoint / name).is_file():
            return plain_state(checkpoint / name, load_file(str(checkpoint / name)))
    raise UsageError(f"{checkpoint}: no ema.safetensors or model.safetensors (not a checkpoint)")


@torch.no_grad()
def export_autoencoder(checkpoint: Path, out_dir: Path, clips: int = 64) -> Path:
    """The checkpoint's EMA autoencoder, with scaling_factor = std of its latents on its data."""
    import dataclasses

    from vidcli.data.section import video_dataset
    from vidcli.models.dcae import load_autoencoder, save_autoencoder
    from vidcli.recipe import load_recipe

    model = load_autoencoder(checkpoint)
    model.load_state_dict(_ema_state(checkpoint))
    data = load_recipe(checkpoint / "recipe.toml").data
    dataset = video_dataset(data)
    latents = [model.encoder(dataset[i]["video"][None]) for i in range(min(clips, len(dataset)))]
    scale = float(torch.cat(latents).std())
    export = type(model)(dataclasses.replace(model.config, scaling_factor=scale))
    export.load_state_dict(model.state_dict())
    return save_autoencoder(export, out_dir)


@torch.no_grad()
def export_reducio_autoencoder(checkpoint: Path, out_dir: Path) -> Path:
    """The checkpoint's EMA Reducio-VAE, fp32 (its latents are layer-normed: no scale)."""
    from vidcli.models.reducio import load_reducio, save_reducio

    model = load_reducio(checkpoint)
    # The EMA holds the trained parameters; the fixed sinusoid tables (pos_embed) stay.
    state = model.state_dict()
    ema = _ema_state(checkpoint)
    unknown = sorted(set(ema) - set(state))
    if unknown:
        raise UsageError(f"{checkpoint}: EMA keys {unknown[:3]} are not the Reducio-VAE's")
    model.load_state_dict({**state, **ema})
    return save_reducio(model, out_dir)


def export_dit(checkpoint: Path, out_dir: Path) -> Path:
    """The checkpoint's EMA DiT in bfloat16 (loaders upcast it to float32)."""
    from vidcli.models.mmdit import load_dit, save_dit

    model = load_dit(checkpoint)
    model.load_state_dict(_ema_state(checkpoint))
    return save_dit(model.to(torch.bfloat16), out_dir)


def export_dir(part: str, out: Path | None, overwrite: bool, overwrite_package: bool) -> Path:
    """Where `part` is exported: `out`, or the package's own demo folder when explicitly asked;
    UsageError rather than replacing anything unasked."""
    if (out is None) == (not overwrite_package):
        raise UsageError(
            f"python -m vidcli.demo {part}: give exactly one of --out DIR (a new folder) or "
            f"--overwrite-package (replace {DEMO_DIR / part})"
        )
    if out is None:
        if part.startswith("reducio-"):
            return REDUCIO_DEMO_DIR / part.removeprefix("reducio-")
        return DEMO_DIR / part
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: folder is not empty; add --overwrite to replace it")
    return out


EXPORTERS = {
    "ae": export_autoencoder,
    "dit": export_dit,
    "reducio-ae": export_reducio_autoencoder,
    "reducio-dit": export_dit,
}
"""`python -m vidcli.demo PART`: the exporter of each part."""


def main(argv: list[str] | None = None) -> int:
    from vidcli.console import report_error

    parser = argparse.ArgumentParser(prog="python -m vidcli.demo", description=__doc__)
    parser.add_argument("part", choices=tuple(EXPORTERS))
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, help="folder to export into")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--overwrite-package",
        action="store_true",
        help="replace the installed package's demo model (vidcli/assets/demo/PART; "
        "reducio-PART: vidcli/assets/reducio-demo/PART)",
    )
    args = parser.parse_args(argv)
    exporter = EXPORTERS[args.part]
    try:
        out_dir = export_dir(args.part, args.out, args.overwrite, args.overwrite_package)
        out = exporter(args.checkpoint.resolve(), out_dir)
    except Exception as err:  # one line (and exit 2 for usage), as the vidcli commands do
        return report_error(err)
    config = json.loads((out / "config.json").read_text())
    print(out, f"scaling_factor={config.get('scaling_factor')}" if args.part == "ae" else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
