"""`vidcli benchmark --quality`: reconstruction PSNR/SSIM of trained autoencoders on real clips
of a prepare-data manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from vidcli import metrics
from vidcli.benchmark.options import DTYPES, BenchmarkOptions, Settings
from vidcli.errors import ShapeError, UsageError


def parse_weights(specs: list[str]) -> dict[str, Path]:
    """['PRESET=PATH', ...] -> {preset: path}; UsageError naming the bad entry."""
    from vidcli.models.autoencoders import all_presets

    weights = {}
    for spec in specs:
        preset, sep, path = spec.partition("=")
        if not sep or preset not in all_presets() or not path:
            raise UsageError(
                f"--ae-weights {spec!r}: expected PRESET=PATH with PRESET one of "
                f"{', '.join(all_presets())}"
            )
        weights[preset] = Path(path)
    return weights


def reconstruction_quality(options: BenchmarkOptions, s: Settings) -> list[dict[str, Any]]:
    """PSNR/SSIM (pixels mapped to [0, 1]) of decode(encode(clip)) for each weighted AE, any
    family; a causal AE (HunyuanVideo VAE, T = 4k + 1) reads `frames` rounded up to its next
    valid count (`compare_ae.row_frames`)."""
    from vidcli.benchmark.compare_ae import row_frames
    from vidcli.data.datasets import VideoDataset
    from vidcli.models.autoencoders import load_autoencoder
    from vidcli.models.content import reconstruct
    from vidcli.models.dcae import TilingConfig

    manifest = Path(options.quality) / "videos.parquet"
    if not manifest.is_file():
        raise UsageError(
            f"--quality {options.quality}: no videos.parquet there",
            hint=f"vidcli prepare-data CLIPS/ --out {options.quality}",
        )
    weights = parse_weights(options.ae_weights)
    if not weights:
        raise UsageError("--quality needs --ae-weights PRESET=PATH for at least one AE")
    device, dtype = torch.device(s.device), DTYPES[s.dtype]
    results = []
    for preset, path in weights.items():
        ae = load_autoencoder(path, preset=preset if path.is_file() else None)
        ae = ae.to(device=device, dtype=dtype)
        frames = row_frames(ae, s.frames)
        dataset = VideoDataset(manifest, num_frames=frames, height=s.height, width=s.width)
        clips = min(len(dataset), options.quality_clips)
        if device.type == "cuda":
            ae.tiling = TilingConfig()
        scores = []
        for i in range(clips):
            x = dataset[i]["video"].unsqueeze(0).to(device=device, dtype=dtype)
            with torch.no_grad():
                rec = reconstruct(ae, x)  # a conditioned AE decodes with the clip's own frame
            if rec.shape != x.shape:
                raise ShapeError(
                    f"{preset}: {frames} frames do not round-trip (got {rec.shape[2]}); "
                    "use 1 or a multiple of 8 frames for 4x temporal DC-AEs"
                )
            # [-1, 1] -> [0, 1], clamped like a written video.
            a, b = (x.float() + 1) / 2, ((rec.float() + 1) / 2).clamp(0, 1)
            scores.append(
                (
                    metrics.psnr(a, b),
                    metrics.ssim(
                        rearrange(a, "b c t h w -> (b c t) h w"),
                        rearrange(b, "b c t h w -> (b c t) h w"),
                    ),
                )
            )
        results.append(
            {
                "ae": preset,
                "weights": str(path),
                "clips": clips,
                "frames": frames,
                "psnr": sum(p for p, _ in scores) / clips,
                "ssim": sum(q for _, q in scores) / clips,
            }
        )
    return results
