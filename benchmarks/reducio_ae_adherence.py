"""Does a conditioned AE (the Reducio demo's) keep a clip's colour and direction? Held-out clips.

Renders held-out shapes clips (a seed other than the training set's 0, all 60 colour × shape ×
direction combinations once at the default 60), reads them at the demo's 32 px as training does
(64 px MP4 -> cover + centre crop), reconstructs each with its own content frame, and measures the
dominant blob of the reconstruction (`vidcli.data.synthetic.measure_shapes_clip`) against the
clip's caption. Two more rows isolate the parts:

- `clip`: the measurement on the input clips themselves (what a perfect AE would score);
- `still`: decode of the content frame's own latent (`content_latent`: the frame held still), the
  content pathway alone; its colour is what the decoder copies from the content frame, and the
  DiT's condition is exactly this latent.

    python benchmarks/reducio_ae_adherence.py                            # the shipped demo AE
    python benchmarks/reducio_ae_adherence.py --ae runs/reducio-demo-ae/checkpoints/latest
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from vidcli.data.synthetic import make_shapes_dataset, measure_shapes_clip
from vidcli.demo import REDUCIO_DEMO_DIR, export_reducio_autoencoder
from vidcli.media import read_frames, to_uint8_frames
from vidcli.metrics import psnr
from vidcli.models.content import content_latent, decode, reconstruct
from vidcli.models.reducio import load_reducio


def held_out_clips(n: int, seed: int, size: int, frames: int) -> tuple[torch.Tensor, list[dict]]:
    """n clips (n, 3, T, size, size) in [-1, 1] and their listing rows (colour, direction, ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = make_shapes_dataset(tmp, n, frames=frames, seed=seed)
        rows = [json.loads(line) for line in listing.read_text().splitlines()]
        clips = [
            read_frames(Path(tmp) / row["path"], num_frames=frames, size=(size, size))
            for row in rows
        ]
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3)
    return video.float().div(127.5).sub(1.0), rows


def load_ae(path: Path):
    """A Reducio-VAE folder, or a train-ae checkpoint (its EMA weights, as the export takes)."""
    if (path / "ema.safetensors").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            return load_reducio(export_reducio_autoencoder(path, Path(tmp) / "ae"))
    return load_reducio(path)


def score(videos: torch.Tensor, rows: list[dict]) -> dict[str, float]:
    """Colour / direction / both accuracy of videos (N, 3, T, H, W) against their rows."""
    got = [measure_shapes_clip(to_uint8_frames(v)) for v in videos]
    colour = [g[0] == r["colour"] for g, r in zip(got, rows, strict=True)]
    direction = [g[1] == r["direction"] for g, r in zip(got, rows, strict=True)]
    return {
        "colour": float(np.mean(colour)),
        "direction": float(np.mean(direction)),
        "both": float(np.mean([c and d for c, d in zip(colour, direction, strict=True)])),
    }


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae", type=Path, default=REDUCIO_DEMO_DIR / "ae")
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1, help="the training set uses seed 0")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    ae = load_ae(args.ae)
    video, rows = held_out_clips(args.clips, args.seed, args.size, ae.frames)
    recon = reconstruct(ae, video).clamp(-1, 1)
    images = ae.content_frame(video)
    still = decode(ae, content_latent(ae, images), images).clamp(-1, 1)
    report = {
        "ae": str(args.ae),
        "clips": len(rows),
        "psnr": psnr(recon, video, 2.0),
        "reconstruction": score(recon, rows),
        "clip": score(video, rows),
        "still": score(still, rows),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['ae']}: {report['clips']} held-out clips, PSNR {report['psnr']:.2f} dB")
        for name in ("reconstruction", "still", "clip"):
            s = report[name]
            print(
                f"  {name:<15} colour {s['colour']:6.1%}  direction {s['direction']:6.1%}  "
                f"both {s['both']:6.1%}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
