"""Peak RSS of tiled vs untiled DC-AE decode for growing inputs (one subprocess per run).

    python benchmarks/bench_dcae_memory.py --preset dc-ae-demo --sizes 128 256 512 --frames 16

Tiled decode should stay near the cost of one tile plus the output tensor, while untiled decode
grows with the input. Each measurement runs in a fresh interpreter so ru_maxrss is its own peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, torch
from vidcli.models.dcae import TilingConfig, build_autoencoder
preset, tiled = sys.argv[1], sys.argv[5] == "1"
frames, size, tile = (int(a) for a in sys.argv[2:5])
torch.set_num_threads(1)
model = build_autoencoder(preset).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c, t, h, w = model.latent_shape(frames, size, size)
z = torch.randn(1, c, t, h, w)
tiling = TilingConfig(spatial_tile=tile, temporal_tile=8) if tiled else None
with torch.inference_mode():
    out = model.decode(z, tiling=tiling)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out_mb = out.numel() * 4 / 2**20
print(json.dumps({"base_mb": base / 1024, "peak_mb": peak / 1024, "out_mb": out_mb}))
"""


def measure(preset: str, frames: int, size: int, tile: int, tiled: bool) -> dict:
    cmd = [sys.executable, "-c", CHILD, preset, str(frames), str(size), str(tile), str(int(tiled))]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dc-ae-demo")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument(
        "--tile", type=int, default=128, help="spatial tile in px (temporal: 8 frames)"
    )
    args = parser.parse_args()
    print(f"preset {args.preset}, {args.frames} frames, tile {args.tile} px / 8 frames; MB of RSS")
    print(f"{'size':>6}{'output':>9}{'untiled peak':>14}{'tiled peak':>12}{'tiled - output':>16}")
    for size in args.sizes:
        untiled = measure(args.preset, args.frames, size, args.tile, tiled=False)
        tiled = measure(args.preset, args.frames, size, args.tile, tiled=True)
        print(
            f"{size:>6}{tiled['out_mb']:9.1f}{untiled['peak_mb']:14.1f}{tiled['peak_mb']:12.1f}"
            f"{tiled['peak_mb'] - tiled['out_mb']:16.1f}"
        )


if __name__ == "__main__":
    main()
