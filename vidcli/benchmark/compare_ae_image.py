"""`vidcli benchmark --compare-ae --image`: the same class-conditional network (DC-AE-Diffusion's
UViT or DiT) on the latents of SD-VAE-f8 (patch 2, the DC-AE paper's baseline) and of DC-AE f32 /
f64 (patch 1) at 512 px: tokens, train-step and denoising-step times, speedups against row 1.

The DC-AE paper reports UViT-H on DC-AE-f64 (patch 1) against SD-VAE-f8 (patch 2) at 512 px:
17.9x training and 19.1x inference throughput on an H100 (`PAPER`). Random weights and inputs
(speed does not depend on the values). Rows are timed interleaved in this process, one call at a
time after a warm-up round (A B C A B C ...), and each speedup is the median over rounds of
baseline time / row time, as `--compare-ae` does for videos. The train step keeps fp32 master
weights and AdamW state with the forward under `--dtype` autocast; the denoising step runs
2 × batch rows (CFG: label and null label) with `--dtype` weights. On the CPU the network is cut
to a few blocks (`--dit-blocks`): the ratios, not the seconds, are the result there.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vidcli import devices
from vidcli.benchmark.options import DTYPES, SEED, WARMUP, check_choice, environment
from vidcli.errors import ShapeError, UsageError
from vidcli.timing import Timing, median_ratio, time_interleaved, time_once

log = logging.getLogger("vidcli")

SD_VAE_F8 = "sd-vae-f8"
"""Stable Diffusion's KL-f8 VAE (the paper's baseline): 4 latent channels, 8x down; only its
latent shape matters here, so no weights or preset are needed."""
DEFAULT_AES = (f"{SD_VAE_F8}:2", "dc-ae-f32c32-in-1.0:1", "dc-ae-f64c128-in-1.0:1")
NETWORKS = {
    "uvit-s": "dc-ae-f32c32-in-1.0-uvit-s-in-512px",
    "uvit-h": "dc-ae-f32c32-in-1.0-uvit-h-in-512px",
    "uvit-2b": "dc-ae-f32c32-in-1.0-uvit-2b-in-512px",
    "dit-xl": "dc-ae-f32c32-in-1.0-dit-xl-in-512px",
}
"""`--dit` for images -> the released model whose network (width, heads, depth) every row uses."""
PAPER = {"dc-ae-f64c128-in-1.0:1": {"train": 17.9, "infer": 19.1}}
"""DC-AE paper (Chen et al. 2025), UViT-H at 512 px on an H100 against SD-VAE-f8 patch 2."""
DEFAULTS = {"cpu": ("uvit-s", 2, 4, 2), "cuda": ("uvit-h", None, 16, 5)}
"""Per device: network, depth (None: the released depth), batch size, repeat. The CPU runs
UViT-S cut to 2 blocks (about five minutes on 2 cores); CUDA the paper's UViT-H whole."""


@dataclass
class ImageCompareOptions:
    ae: list[str] = field(default_factory=list)
    """PRESET:PATCH rows (first = baseline); `sd-vae-f8` or an image DC-AE preset."""
    dit: str | None = None
    dit_blocks: str | None = None
    """Depth of the network (UViT: even), replacing the released one."""
    resolution: int = 512
    batch_size: int | None = None
    repeat: int | None = None
    device: str = "cpu"
    dtype: str = "fp32"


@dataclass
class ImageRow:
    """One autoencoder's row; times in seconds per step (median over rounds)."""

    ae: str
    patch: int
    latent_shape: list[int]
    """(C, S, S) of one image's latent."""
    tokens: int
    """Patch tokens per image: (S / patch)²."""
    train_step_s: float
    infer_step_s: float
    train_rounds: list[float]
    infer_rounds: list[float]
    speedup_train: float = 1.0
    speedup_infer: float = 1.0
    paper_speedup_train: float | None = None
    paper_speedup_infer: float | None = None


@dataclass
class ImageCompareResult:
    env: dict[str, Any]
    rows: list[ImageRow]

    def stdout_lines(self) -> list[str]:
        def paper(row: ImageRow) -> str:
            if row.paper_speedup_train is None:
                return ""
            return f"\t(paper: {row.paper_speedup_train}x / {row.paper_speedup_infer}x)"

        return [
            f"{r.ae}:{r.patch}\ttokens {r.tokens}\ttrain {r.train_step_s:.4g} s "
            f"({r.speedup_train:.2f}x)\tinfer step {r.infer_step_s:.4g} s "
            f"({r.speedup_infer:.2f}x){paper(r)}"
            for r in self.rows
        ]


def latent_shape(spec: str, resolution: int) -> tuple[str, int, tuple[int, int, int]]:
    """(AE name, patch, latent (C, S, S)) of a 'PRESET:PATCH' row; UsageError/ShapeError."""
    from vidcli.models.autoencoders import all_presets, build_autoencoder

    name, _, patch = spec.rpartition(":")
    known = name == SD_VAE_F8 or (name in all_presets() and _is_image_ae(name))
    if not known or not patch.isdigit() or int(patch) < 1:
        images = [SD_VAE_F8] + [p for p in all_presets() if _is_image_ae(p)]
        raise UsageError(
            f"--ae {spec!r}: expected PRESET:PATCH with PATCH >= 1 and PRESET one of "
            f"{', '.join(images)} (--image compares image autoencoders)"
        )
    if name == SD_VAE_F8:
        channels, factor = 4, 8
    else:
        ae = build_autoencoder(name, device="meta")
        channels, factor = ae.latent_channels, ae.spatial_compression
    if resolution % (factor * int(patch)):
        raise ShapeError(
            f"--resolution {resolution}: {spec} needs a multiple of {factor * int(patch)}"
        )
    side = resolution // factor
    return name, int(patch), (channels, side, side)


@functools.cache
def _is_image_ae(preset: str) -> bool:
    from vidcli.models.autoencoders import build_autoencoder

    return not getattr(build_autoencoder(preset, device="meta"), "is_video", True)


def network_config(dit: str, latent: tuple[int, int, int], patch: int, depth: int | None):
    """The released network `dit` resized for one row's latent and patch (and `depth`)."""
    from vidcli.models.dcae_diffusion import RELEASED, UViTConfig

    base = RELEASED[NETWORKS[dit]].network
    depth = base.depth if depth is None else depth
    if isinstance(base, UViTConfig) and depth % 2:
        raise UsageError(f"--dit-blocks {depth}: a UViT needs an even depth (in/out pairs)")
    c, s, _ = latent
    return dataclasses.replace(base, in_channels=c, input_size=s, patch_size=patch, depth=depth)


class _RowBench:
    """One row's network, optimizer and inputs; `train` and `infer` time one call each."""

    def __init__(self, config, batch: int, device: torch.device, dtype: torch.dtype):
        from vidcli.models.dcae_diffusion import DiTConfig, build_network

        torch.manual_seed(SEED)
        self.device, self.dtype = device, dtype
        with torch.device(device):
            self.net = build_network(config).float()
        c, s = config.in_channels, config.input_size
        self.x = torch.randn(batch, c, s, s, device=device)
        dit = isinstance(config, DiTConfig)
        # DiT takes integer timesteps, UViT 1000·t for the VP models (the time token's input)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.t = self.t if dit else self.t.float()
        self.y = torch.randint(0, config.num_classes, (batch,), device=device)
        self.target = torch.randn(batch, self.net.out_channels, s, s, device=device)
        self.optimizer: torch.optim.Optimizer | None = torch.optim.AdamW(
            self.net.parameters(), lr=1e-5
        )

    def _step(self) -> None:
        with devices.autocast(self.device, self.dtype):
            out = self.net(self.x, self.t, self.y)
        F.mse_loss(out.float(), self.target).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self) -> float:
        return time_once(self._step, self.device)

    def finish_train(self) -> None:
        """Free AdamW's state; the denoising step runs `dtype` weights on CFG rows."""
        self.optimizer = None
        self.net.requires_grad_(False).to(self.dtype)
        self.cfg = (
            torch.cat((self.x, self.x)).to(self.dtype),
            torch.cat((self.t, self.t)),
            torch.cat((self.y, torch.full_like(self.y, self.net.config.num_classes))),
        )

    @torch.no_grad()
    def infer(self) -> float:
        return time_once(lambda: self.net(*self.cfg), self.device)


def run(options: ImageCompareOptions) -> ImageCompareResult:
    """Check every option, then time the rows interleaved and fill the speedups vs row 1."""
    from vidcli.benchmark.options import Settings

    where = devices.resolve_device(options.device)
    check_choice("--dtype", options.dtype, tuple(DTYPES))
    dit, depth, batch, repeat = DEFAULTS[where.type]
    dit = options.dit or dit
    check_choice("--dit", dit, tuple(NETWORKS))
    if options.dit_blocks is not None:
        if not options.dit_blocks.isdigit() or int(options.dit_blocks) < 1:
            raise UsageError(
                f"--dit-blocks {options.dit_blocks!r}: --image takes the network's depth, e.g. 2"
            )
        depth = int(options.dit_blocks)
    elif options.dit is not None:
        depth = None  # a named network runs at its released depth unless cut
    batch, repeat = options.batch_size or batch, options.repeat or repeat
    rows = [latent_shape(spec, options.resolution) for spec in (options.ae or DEFAULT_AES)]
    configs = [network_config(dit, latent, patch, depth) for _, patch, latent in rows]
    dtype = DTYPES[options.dtype]
    log.info("compare-ae --image: %s, timed interleaved", ", ".join(f"{a}:{p}" for a, p, _ in rows))
    benches = [_RowBench(config, batch, where, dtype) for config in configs]
    train = time_interleaved([b.train for b in benches], repeat, WARMUP)
    for bench in benches:
        bench.finish_train()
    infer = time_interleaved([b.infer for b in benches], repeat, WARMUP)
    result_rows = [
        _row(name, patch, latent, tr, inf)
        for (name, patch, latent), tr, inf in zip(rows, train, infer, strict=True)
    ]
    for row, tr, inf in zip(result_rows, train, infer, strict=True):
        row.speedup_train = median_ratio(train[0], tr)
        row.speedup_infer = median_ratio(infer[0], inf)
        if result_rows[0].ae == SD_VAE_F8 and f"{row.ae}:{row.patch}" in PAPER:
            paper = PAPER[f"{row.ae}:{row.patch}"]
            row.paper_speedup_train, row.paper_speedup_infer = paper["train"], paper["infer"]
    settings = Settings(
        device=str(where),
        dtype=options.dtype,
        height=options.resolution,
        width=options.resolution,
        frames=1,
        batch_size=batch,
        steps=1,
        text_tokens=0,
        dit=dit,
        dit_blocks=None,
        repeat=repeat,
        ae_timing="full",  # no AE runs here
        threads=torch.get_num_threads(),
    )
    env = environment(settings)
    env.update(
        {
            "resolution": options.resolution,
            "batch_size": batch,
            "network": f"{dit} ({NETWORKS[dit]}), depth {configs[0].depth}",
            "network_params": [sum(p.numel() for p in b.net.parameters()) for b in benches],
            "interleaved": "rows timed A B C A B C ..., one call at a time after a warm-up "
            "round; speedups are medians of per-round ratios",
            "train_precision": f"fp32 master weights and AdamW state, {options.dtype} autocast; "
            f"denoising step with {options.dtype} weights on 2 x batch CFG rows",
            "paper": "DC-AE paper: UViT-H, 512 px, H100, DC-AE-f64 p1 vs SD-VAE-f8 p2: "
            "17.9x training, 19.1x inference",
        }
    )
    return ImageCompareResult(env=env, rows=result_rows)


def _row(name: str, patch: int, latent, train: Timing, infer: Timing) -> ImageRow:
    c, s, _ = latent
    return ImageRow(
        ae=name,
        patch=patch,
        latent_shape=[c, s, s],
        tokens=(s // patch) ** 2,
        train_step_s=train.median,
        infer_step_s=infer.median,
        train_rounds=list(train.seconds),
        infer_rounds=list(infer.seconds),
    )
