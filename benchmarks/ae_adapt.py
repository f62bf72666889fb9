"""AE-Adapt on CPU: move the bundled demo DiT (demo AE, 4x8x8, 16 ch) to a second AE (4x16x16,
32 ch) and compare, after the same number of fine-tuning steps:

    naive       new random img_in / cond_in / final_layer.linear, full fine-tune
    align+full  stage 1 alignment (adapt.stage = "align"), then full fine-tune
    align+lora  stage 1 alignment, then LoRA fine-tune (rank --lora-rank)
    scratch     the same DiT from random initialisation on AE B (reference)

Every run is `vidcli train-dit recipes/demo-dit.toml` with `--set` values (printed to stderr).
Reported: training-loss curves, a validation flow loss on held-out clips (fresh positions and
sizes, every third of the 60 prompts, fixed noise and t) at the start, middle and end of each
run, and prompt adherence (benchmarks/prompt_adherence.py) of each final model. Each step is
skipped when its output exists, so an interrupted run continues.

    # AE B: warm-started from the demo AE (shared stages), then train-ae (docs/benchmarks.md)
    python benchmarks/ae_adapt.py --warm-start runs/ae-b-init
    vidcli train-ae recipes/demo-ae-f16c32.toml --set ae.path='"runs/ae-b-init"' \
        --set train.max_steps=20 --set train.batch_size=2 --set train.lr=5e-4 \
        --set train.lr_schedule=constant --set train.warmup_steps=5 --set train.ckpt_every=10
    python benchmarks/ae_adapt.py --ae-b runs/demo-ae-f16c32/checkpoints/step-0000020 \
        --out runs/ae-adapt --align-steps 60 --steps 50
    # --only NAME trains one run (and its prompt adherence), so runs can go side by side.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO_DIT = REPO / "vidcli" / "assets" / "demo" / "dit"
DEMO_AE = REPO / "vidcli" / "assets" / "demo" / "ae"
SOURCE = "synthetic:shapes:240"
VARIANTS = ("naive", "align+full", "align+lora", "scratch")


def log(message: str) -> None:
    print(f"[ae_adapt] {message}", file=sys.stderr, flush=True)


def vidcli(*args: str) -> None:
    log("vidcli " + " ".join(args))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, "-m", "vidcli", *args, "--quiet"], check=True, env=env)


def sets(values: dict[str, object]) -> list[str]:
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def warm_start_ae_b(out_dir: Path) -> Path:
    """AE B's starting weights: every demo-AE tensor whose name and shape fit, the rest random.

    On a busy 2-core CPU a from-scratch AE B costs hours; starting its shared stages from the
    demo AE leaves only the extra stage and the latent projections to learn.
    """
    from vidcli.models import build_autoencoder, load_autoencoder, save_autoencoder
    from vidcli.recipe import load_recipe

    section = load_recipe(REPO / "recipes" / "demo-ae-f16c32.toml").ae
    torch.manual_seed(0)
    model = build_autoencoder(section.preset, **section.overrides)
    demo = load_autoencoder(DEMO_AE).state_dict()
    state = model.state_dict()
    fits = [k for k, v in state.items() if k in demo and demo[k].shape == v.shape]
    state.update({k: demo[k] for k in fits})
    model.load_state_dict(state)
    log(f"AE B init: {len(fits)} of {len(state)} tensors from the demo AE")
    return save_autoencoder(model, out_dir)


def prepare(out: Path, ae_b_checkpoint: Path, cache: str) -> tuple[Path, Path, Path]:
    """AE B exported (scaling factor measured), and both latent sets of the same manifest."""
    from vidcli.demo import export_autoencoder

    ae_b = out / "ae-b"
    if not (ae_b / "config.json").is_file():
        export_autoencoder(ae_b_checkpoint.resolve(), ae_b)
    recipe = str(REPO / "recipes" / "demo-dit.toml")
    latents = {}
    for name, ae in (("a", DEMO_AE), ("b", ae_b)):
        folder = out / f"latents-{name}"
        if not list(folder.glob("latents-*.parquet")):
            values = {"ae.path": str(ae), "data.source": SOURCE, "data.cache_dir": cache}
            vidcli("prepare-data", "--encode", recipe, "--out", str(folder), *sets(values))
        latents[name] = folder
    return ae_b, latents["a"], latents["b"]


def train(out: Path, name: str, values: dict[str, object]) -> Path:
    run = out / name
    final = run / "checkpoints" / f"step-{values['train.max_steps']:07d}"
    if not final.is_dir():
        values = {**values, "train.output": str(run)}
        vidcli("train-dit", str(REPO / "recipes" / "demo-dit.toml"), *sets(values))
    return run


def common(out: Path, ae_b: Path, latents_b: Path, cache: str, steps: int, lr: float) -> dict:
    return {
        "ae.path": str(ae_b),
        "dit.patch_size": 1,  # 4x4 tokens per latent frame, as the demo AE at patch 2
        "data.source": SOURCE,
        "data.cache_dir": cache,
        "data.latents": str(latents_b),
        "train.max_steps": steps,
        "train.lr": lr,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 10,
        "train.ema_decay": 0.0,  # short runs: sample the weights themselves
        "train.log_every": 10,
        "train.ckpt_every": max(1, steps // 4),
        "train.keep_last": 8,
    }


@torch.no_grad()
def held_out(ae_b: Path, stride: int = 3, seed: int = 1234):
    """Latents (N, C, T, H, W) of fresh clips (every `stride`-th prompt of the 60, new sizes and
    positions: a busy 2-core CPU evaluates 20 clips per checkpoint in reasonable time) + text."""
    from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, render_shapes_clip
    from vidcli.models import load_autoencoder
    from vidcli.models.text import TextEncoderConfig, build_text_encoder

    rng = np.random.default_rng(seed)
    ae = load_autoencoder(ae_b).eval()
    captions, latents = [], []
    for c, s, d in list(itertools.product(COLOURS, SHAPES, DIRECTIONS))[::stride]:
        clip = render_shapes_clip(c, s, d, frames=16, size=64, rng=rng)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
        latents.append(ae.encode(video[None])[0])
        captions.append(f"a {c} {s} moving {d}")
    text = build_text_encoder(TextEncoderConfig(backend="minilm", minilm_max_length=16))
    emb = text.encode(captions)
    return torch.stack(latents).float(), emb.tokens.float(), emb.pooled.float()


@torch.no_grad()
def validation_loss(model, data, levels: int = 4, seed: int = 0) -> float:
    """Mean flow-matching error over held-out clips at `levels` fixed t (no shift), fixed noise."""
    from vidcli import flow

    latents, tokens, pooled = data
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for k in range(levels):
        t = torch.full((len(latents),), (k + 0.5) / levels)
        noise = torch.randn(latents.shape, generator=gen)
        x_t = flow.noisy_latents(latents, noise, t)
        pred = model.eval().forward_video(x_t, t, tokens, pooled)
        total += float((pred - flow.velocity_target(latents, noise)).pow(2).mean())
    return total / levels


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    found = sorted((run / "checkpoints").glob("step-*"))
    return [(int(p.name.split("-")[1]), p) for p in found]


def cached_adherence(run: Path) -> dict:
    """Prompt adherence of a run's final checkpoint (kept in `run/adherence.json`)."""
    cache = run / "adherence.json"
    if not cache.is_file():
        checkpoint = checkpoints(run)[-1][1]
        script = REPO / "benchmarks" / "prompt_adherence.py"
        log(f"prompt adherence of {checkpoint}")
        done = subprocess.run(
            [sys.executable, str(script), "--checkpoint", str(checkpoint), "--json"],
            check=True,
            capture_output=True,
            text=True,
        )
        cache.write_text(json.dumps(json.loads(done.stdout)["summary"]) + "\n")
    return json.loads(cache.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-b", type=Path, help="train-ae checkpoint of AE B")
    parser.add_argument(
        "--warm-start", type=Path, help="only write AE B's starting weights to this folder"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/ae-adapt"))
    parser.add_argument("--align-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=200, help="fine-tuning steps per variant")
    parser.add_argument("--lr", type=float, default=3e-4, help="full fine-tuning / scratch")
    parser.add_argument("--align-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--skip-adherence", action="store_true")
    parser.add_argument("--only", choices=("align", *VARIANTS), help="train one run, then stop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.warm_start:
        print(warm_start_ae_b(args.warm_start))
        return 0
    if args.ae_b is None:
        parser.error("--ae-b is required (or --warm-start)")
    out = args.out.resolve()
    cache = str(REPO / ".vidcli-cache")
    ae_b, latents_a, latents_b = prepare(out, args.ae_b, cache)

    adapt = {"adapt.source": str(DEMO_DIT), "dit.preset": "mmdit-demo"}
    align_values = common(out, ae_b, latents_b, cache, args.align_steps, args.align_lr)
    align_values.update(adapt)
    align_values.update({"adapt.stage": "align", "adapt.source_latents": str(latents_a)})
    aligned = out / "align" / "checkpoints" / f"step-{args.align_steps:07d}"

    finetune = {**adapt, "adapt.stage": "finetune"}
    runs = {
        "align": align_values,
        "naive": {**common(out, ae_b, latents_b, cache, args.steps, args.lr), **finetune},
        "align+full": {
            **common(out, ae_b, latents_b, cache, args.steps, args.lr),
            **finetune,
            "adapt.aligned": str(aligned),
        },
        "align+lora": {
            **common(out, ae_b, latents_b, cache, args.steps, args.lora_lr),
            **finetune,
            "adapt.aligned": str(aligned),
            "lora.rank": args.lora_rank,
            # The new in/out layers adapt too: LoRA on them keeps the file a full description.
            "lora.targets": [*_default_targets(), "img_in", "final_layer.linear"],
        },
        "scratch": {
            **common(out, ae_b, latents_b, cache, args.steps, args.lr),
            "dit.preset": "mmdit-demo",
        },
    }
    # --only runs one variant (and its prompt adherence): variants can run side by side.
    for name in [args.only] if args.only else runs:
        if name.startswith("align+") and not aligned.is_dir():
            train(out, "align", runs["align"])
        run = train(out, name.replace("+", "-"), runs[name])
        if name != "align" and not args.skip_adherence:
            cached_adherence(run)
    if args.only:
        return 0

    results = evaluate(out, ae_b, aligned, args)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "ae-adapt-cpu.png")
    if args.json:
        print(json.dumps(results))
    else:
        for name, row in results["variants"].items():
            final = row["val_loss"][-1][1]
            print(f"{name:<11} val loss {final:.4f}  adherence {row.get('adherence')}")
    return 0


def _default_targets() -> list[str]:
    from vidcli.recipe import LORA_DEFAULT_TARGETS

    return list(LORA_DEFAULT_TARGETS)


def evaluate(out: Path, ae_b: Path, aligned: Path, args) -> dict:
    from vidcli.models import load_dit
    from vidcli.train.adapt import load_source, swap_autoencoder

    data = held_out(ae_b)
    source = load_source(str(DEMO_DIT))
    start_naive = validation_loss(swap_autoencoder(source, data[0].shape[1], 1, seed=0), data)
    start_aligned = validation_loss(load_dit(aligned).float(), data)
    starts = {"naive": start_naive, "align+full": start_aligned, "align+lora": start_aligned}
    results: dict = {"align_steps": args.align_steps, "steps": args.steps, "variants": {}}
    results["align_curve"] = [json.loads(line) for line in (out / "align" / "metrics.jsonl").open()]
    for name in VARIANTS:
        run = out / name.replace("+", "-")
        cache = run / "val_loss.json"  # (step, loss) pairs, kept: adherence may come later
        if not cache.is_file():
            curve = [(0, starts[name])] if name in starts else []
            saved = checkpoints(run)
            for step, folder in [saved[len(saved) // 2], saved[-1]]:  # the middle and the end
                curve.append((step, validation_loss(load_dit(folder).float(), data)))
            cache.write_text(json.dumps(curve) + "\n")
        curve = json.loads(cache.read_text())
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        row = {"val_loss": curve, "train_loss": [(m["step"], m["loss"]) for m in metrics]}
        if not args.skip_adherence:
            row["adherence"] = cached_adherence(run)
        results["variants"][name] = row
        log(f"{name}: val loss {curve[-1][1]:.4f}")
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, row in results["variants"].items():
        steps, losses = zip(*row["train_loss"], strict=True)
        axes[0].plot(steps, losses, label=name)
        steps, losses = zip(*row["val_loss"], strict=True)
        axes[1].plot(steps, losses, marker="o", label=name)
    axes[0].set(title="training flow loss (B latents)", xlabel="fine-tuning step", yscale="log")
    axes[1].set(title="held-out flow loss", xlabel="fine-tuning step", yscale="log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
