"""The memory plans against measured peaks on the CPU, one fresh process per setting.

    python benchmarks/plan_vs_measured.py            # every setting, then the table
    python benchmarks/plan_vs_measured.py --only dit-taylorseer vae-tiled

Each setting runs at real widths with the depth cut (the 11B Open-Sora 2.0 layout with 1 double
+ 1 single block, the HunyuanVideo VAE, mmdit-b) in fp32. The plan's number is what it adds on
top of what is already resident (DiT activations and cache state; decode activations and the
video; weights, gradients, AdamW, EMA and saved activations of a training step); the measured
number is the process's peak RSS (VmHWM, reset through /proc/self/clear_refs) minus its RSS just
before the measured call. A setting passes when plan / measured is within 0.8..1.2.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

GB = 1e9
OPENSORA = "recipes/opensora-v2-768px.toml"
# 1 + 1 blocks of the 11B layout: 17 frames at 256x384 are 5 x 16 x 24 = 1920 image tokens.
CUT_11B = [
    "t2i.enabled=false",
    "dit.overrides={depth=1, depth_single_blocks=1}",
    "sample.frames=17",
    "sample.height=256",
    "sample.width=384",
]
TOLERANCE = 0.2


def _status(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


def measured_peak(run: Callable[[], object]) -> int:
    """Bytes the process's resident set grew by at its peak while `run()` ran."""
    gc.collect()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    run()
    return _status("VmHWM") - base


def _real_dit(recipe, latent_channels: int):
    """The recipe's DiT (random weights, fp32, CPU), shaped as the plan shapes it."""
    from vidcli.models.mmdit import build_dit
    from vidcli.plans.sizes import meta_dit

    on_meta = meta_dit(recipe.dit, latent_channels, recipe.text)
    return build_dit(on_meta.config).eval(), on_meta


def _inputs(on_meta, rows: int, latent, text_tokens: int) -> dict:
    from vidcli.plans.sizes import dit_inputs

    shapes = dit_inputs(on_meta, rows, latent, text_tokens, torch.float32)
    return {k: None if v is None else torch.randn(v.shape) for k, v in shapes.items()}


def generate_setting(cache: str, calls: int) -> tuple[float, float]:
    """The cut 11B DiT over `calls` denoiser calls of 2 CFG rows under `[sample] cache`."""
    from vidcli.plans import plan_generate
    from vidcli.recipe import load_recipe
    from vidcli.sampling.cache import METHODS, CachedDiT, CacheSpec, build_policy, find_calibration

    recipe = load_recipe(OPENSORA, [*CUT_11B, f"sample.cache='{cache}'"])
    plan = plan_generate(recipe, torch.device("cpu"), torch.float32, None)
    c, t, h, w = plan.latent_shape
    model, _ = _real_dit(recipe, c)
    g = torch.Generator().manual_seed(0)
    rows = plan.cfg_rows
    latents = torch.randn(rows, c, t, h, w, generator=g)
    txt = torch.randn(rows, plan.text_tokens, model.config.context_in_dim, generator=g)
    y_vec = torch.randn(rows, model.config.vec_in_dim, generator=g)
    fn = model.forward_video
    if cache != "none":
        spec = CacheSpec(cache, METHODS[cache].default)
        policy = build_policy(spec, find_calibration("", ""), recipe.sample.steps, t)
        fn = CachedDiT(model, policy, recipe.sample.steps)

    def run() -> None:
        with torch.no_grad():
            for step in range(calls):
                fn(latents, torch.full((rows,), 1.0 - step / calls), txt, y_vec)

    measured = measured_peak(run)
    return (plan.dit_activation_gb + plan.cache_state_gb) * GB, measured


def vae_setting(tiled: bool) -> tuple[float, float]:
    """The HunyuanVideo VAE decoding a small clip, untiled or in the plan's largest tiles."""
    from vidcli.models import build_autoencoder
    from vidcli.models.dcae import TilingConfig
    from vidcli.plans.generate import decode_options
    from vidcli.plans.sizes import meta_autoencoder
    from vidcli.recipe import load_recipe

    size = ["sample.frames=17", "sample.height=192", "sample.width=192"]
    recipe = load_recipe(OPENSORA, size)
    sample = recipe.sample
    options = decode_options(meta_autoencoder(recipe.ae), sample, torch.float32)
    tiling, (planned_gb, _), _ = options[1] if tiled else options[0]
    ae = build_autoencoder(recipe.ae.preset).eval()
    z = torch.randn(1, *ae.latent_shape(sample.frames, sample.height, sample.width))
    config = TilingConfig(**tiling) if tiling else None

    def run() -> None:
        with torch.no_grad():
            ae.decode(z, tiling=config).float().cpu()

    return planned_gb * GB, measured_peak(run)


def train_setting(overrides: list[str], latent, recipe_path: str | None) -> tuple[float, float]:
    """Two AdamW steps (+ EMA) of a DiT; the second, in steady state, is measured from before
    the model was built, so weights, gradients, moments and the EMA shadow count."""
    from vidcli.plans import RESERVED_GB, plan_train
    from vidcli.plans.sizes import text_widths
    from vidcli.recipe import load_recipe
    from vidcli.train.ema import EMA

    recipe = load_recipe(recipe_path, overrides)
    plan = plan_train(recipe, latent, None)
    gc.collect()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    model, on_meta = _real_dit(recipe, latent[0])
    if recipe.lora.rank:
        from vidcli.train.lora import add_lora

        model = add_lora(model, recipe.lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=False)
    ema = EMA(model, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
    text_tokens, _, _ = text_widths(recipe.text)
    inputs = _inputs(on_meta, plan.batch_size, latent, text_tokens)

    def step() -> None:
        loss = model(**inputs).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as ZeRO's buffers
        if ema is not None:
            ema.update(model)

    step()
    step()
    measured = _status("VmHWM") - base
    return (plan.peak_gb - RESERVED_GB) * GB, measured


SETTINGS: dict[str, tuple[str, Callable[[], tuple[float, float]]]] = {
    "dit-plain": (
        "11B layout 1+1 blocks, 1920+512 tokens x 2 rows, 3 calls",
        lambda: generate_setting("none", 3),
    ),
    "dit-taylorseer": (
        "same, taylorseer:5 (3 full warm-up calls: Δ⁰ and Δ¹ of 3 modules each)",
        lambda: generate_setting("taylorseer", 3),
    ),
    "dit-toca": (
        "same, toca:4 (3 full calls, 1 partial)",
        lambda: generate_setting("toca", 4),
    ),
    "vae-untiled": (
        "HunyuanVideo VAE decode, 17 x 192 x 192, untiled",
        lambda: vae_setting(tiled=False),
    ),
    "vae-tiled": (
        "HunyuanVideo VAE decode, 17 x 192 x 192, the plan's least-work tiles",
        lambda: vae_setting(tiled=True),
    ),
    "train-ema": (
        "mmdit-b (768 wide, 4+5 blocks) step, 1 x 2048 tokens, AdamW + EMA",
        lambda: train_setting(
            ["dit.preset='mmdit-b'", "train.batch_size=1", "train.ema_decay=0.99"],
            (32, 2, 32, 32),
            None,
        ),
    ),
    "train-lora": (
        "11B layout 1+1 blocks, LoRA rank 16, 1 x 1536 tokens, AdamW + EMA of the adapters",
        lambda: train_setting(
            [*CUT_11B, "lora.rank=16", "train.batch_size=1", "train.ema_decay=0.99"],
            (16, 4, 32, 48),
            OPENSORA,
        ),
    ),
}


def _child(name: str) -> None:
    torch.manual_seed(0)
    tick = time.perf_counter()
    planned, measured = SETTINGS[name][1]()
    seconds = time.perf_counter() - tick
    print(json.dumps({"planned": planned, "measured": measured, "seconds": seconds}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(SETTINGS), help="settings to run")
    parser.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per setting")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        _child(args.child)
        return
    rows, failed = [], 0
    for name in args.only or list(SETTINGS):
        cmd = [sys.executable, __file__, "--child", name, "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        ratio = result["planned"] / result["measured"]
        ok = abs(ratio - 1) <= TOLERANCE
        failed += not ok
        rows.append(
            f"| {name} | {SETTINGS[name][0]} | {result['planned'] / GB:.3f} | "
            f"{result['measured'] / GB:.3f} | {ratio:.2f} | {'yes' if ok else 'NO'} |"
        )
        print(rows[-1], flush=True)
    print("\n| setting | what | plan GB | measured GB | plan / measured | within ±20 % |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
