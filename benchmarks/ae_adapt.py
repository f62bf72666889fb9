"""AE-Adapt on CPU: move the bundled demo DiT (demo AE, 4x8x8, 16 channels) to other AEs and
compare, at equal compute (DiT FLOPs) and at equal fine-tuning steps, over several seeds:

    naive       new random img_in / cond_in / final_layer.linear, full fine-tune
    align+full  iterative stage 1 (vidcli.train.adapt.alignment_loss: new layers only, body
                frozen), then full fine-tune
    align+lora  the same stage 1, then LoRA fine-tune (rank --lora-rank)
    lsq+full    closed-form stage 1 (vidcli.train.adapt.least_squares_alignment: img_in and
                final_layer.linear fitted by least squares from paired latents), then full
    lsq+lora    the closed-form stage 1, then LoRA
    scratch     the same DiT from random initialisation on AE B (reference)

Budgets. A step's cost is counted with torch's FlopCounterMode on one step of each kind (full
fine-tune, LoRA, alignment through the frozen body). The equal-compute budget is what align+full
spends: align_steps alignment steps + `--steps` full steps; every variant gets
steps = (budget - its stage-1 FLOPs) / its step FLOPs (the least-squares fit is counted too).
`equal_steps` gives every variant `--steps` fine-tuning steps (stage 1 not counted).

AE Bs (benchmarks/ae_adapt_aes.py): the demo AE with its latent projections widened to 32 and
128 channels (the defaults; 64 as well in docs/benchmarks.md), trained further with
`vidcli train-ae` on recipes/demo-ae-f8c{32,64,128}.toml; any exported AE can be given as
--ae-b NAME=PATH (the DiT's patch is chosen so that B's token grid is A's). Everything trains
in this process (the training step is train-dit's `flow_loss` and adapt's `alignment_loss`), so
the many short runs share one text encoder and one latent cache.

Reported per AE B x variant x budget x seed: held-out flow loss (fresh clips, fixed noise and t)
and prompt adherence (colour / direction of the generated blob, `measure_shapes_clip`) on
--adherence-prompts prompts. Rows are kept in OUT/rows.jsonl: an interrupted run continues.

    python benchmarks/ae_adapt.py --json          # the defaults (see docs/benchmarks.md)
    python benchmarks/ae_adapt.py --markdown --plot docs/ae-adapt-cpu.png   # tables + picture

The defaults (40 stage-1 + 40 fine-tuning steps, 120 clips, 3 seeds, 10 prompts x 8 sampling
steps, 1 thread) are sized to finish both AE Bs within an hour on the shared 2-core CPU: a full
step there costs ~1.1 s, an evaluation (held-out loss + adherence) ~12 s.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEMO_DIT = REPO / "vidcli" / "assets" / "demo" / "dit"
DEMO_AE = REPO / "vidcli" / "assets" / "demo" / "ae"
SOURCE = "synthetic:shapes:240"
VARIANTS = ("naive", "align+full", "align+lora", "lsq+full", "lsq+lora", "scratch")
DEFAULT_AE_B = {"f8c128": REPO / "runs" / "ae-b-f8c128", "f8c32": REPO / "runs" / "ae-b-f8c32"}
# The arguments a row depends on: rows.jsonl resumes only rows run with the same ones.
SETTINGS = (
    "align_steps",
    "steps",
    "clips",
    "lr",
    "align_lr",
    "lora_lr",
    "lora_rank",
    "adherence_prompts",
    "sample_steps",
)


def log(message: str) -> None:
    print(f"[ae_adapt {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data: both AEs' latents of the same 240 training clips, their captions, held-out clips


@dataclass
class Data:
    latent_a: torch.Tensor  # (N, C_A, T, H, W), the demo AE's scaled latents
    latent_b: torch.Tensor  # (N, C_B, T, H', W'), AE B's of the same clips
    tokens: torch.Tensor  # (N, L, D) caption tokens
    pooled: torch.Tensor  # (N, D)
    empty: tuple[torch.Tensor, torch.Tensor]  # the "" caption (caption dropout)


_TEXT = None


def text_encoder():
    global _TEXT
    if _TEXT is None:
        from vidcli.models.text import TextEncoderConfig, build_text_encoder

        _TEXT = build_text_encoder(TextEncoderConfig(backend="minilm", minilm_max_length=16))
    return _TEXT


@torch.no_grad()
def encode_clips(ae_path: Path, cache: Path, clips: int = 240) -> torch.Tensor:
    """Latents of the first `clips` of the 240 training clips (demo-dit's [data]: 16 frames,
    64 px), cached."""
    if cache.is_file():
        cached = torch.load(cache)
        if len(cached) >= clips:
            return cached[:clips]
    from vidcli.data.section import video_dataset
    from vidcli.models import load_autoencoder
    from vidcli.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "demo-dit.toml", [f"data.source={json.dumps(SOURCE)}"])
    dataset = video_dataset(recipe.data)
    ae = load_autoencoder(ae_path).eval()
    log(f"encoding {clips} clips with {ae_path}")
    latents = []
    for first in range(0, clips, 16):
        rows = range(first, min(first + 16, clips))
        latents.append(ae.encode(torch.stack([dataset[i]["video"] for i in rows])).float())
    out = torch.cat(latents)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


@torch.no_grad()
def captions(cache: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if cache.is_file():
        return torch.load(cache)
    from vidcli.data.section import video_dataset
    from vidcli.recipe import load_recipe

    recipe = load_recipe(REPO / "recipes" / "demo-dit.toml", [f"data.source={json.dumps(SOURCE)}"])
    dataset = video_dataset(recipe.data)
    text = list(dataset.captions)
    emb, empty = text_encoder().encode(text), text_encoder().encode([""])
    out = (emb.tokens.float(), emb.pooled.float(), empty.tokens.float(), empty.pooled.float())
    torch.save(out, cache)
    return out


@torch.no_grad()
def held_out(ae_b: Path, stride: int = 3, seed: int = 1234):
    """Latents (N, C, T, H, W) of fresh clips (every `stride`-th prompt of the 60, new sizes and
    positions) + their caption embeddings."""
    from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, render_shapes_clip
    from vidcli.models import load_autoencoder

    rng = np.random.default_rng(seed)
    ae = load_autoencoder(ae_b).eval()
    texts, latents = [], []
    for c, s, d in list(itertools.product(COLOURS, SHAPES, DIRECTIONS))[::stride]:
        clip = render_shapes_clip(c, s, d, frames=16, size=64, rng=rng)
        video = torch.from_numpy(clip).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)
        latents.append(ae.encode(video[None])[0])
        texts.append(f"a {c} {s} moving {d}")
    emb = text_encoder().encode(texts)
    return torch.stack(latents).float(), emb.tokens.float(), emb.pooled.float()


@torch.no_grad()
def validation_loss(model, data, levels: int = 4, seed: int = 0) -> float:
    """Mean flow-matching error over held-out clips at `levels` fixed t (no shift), fixed noise."""
    from vidcli import flow

    latents, tokens, pooled = data
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    was_training = model.training
    model.eval()
    for k in range(levels):
        t = torch.full((len(latents),), (k + 0.5) / levels)
        noise = torch.randn(latents.shape, generator=gen)
        x_t = flow.noisy_latents(latents, noise, t)
        pred = model.forward_video(x_t, t, tokens, pooled)
        total += float((pred - flow.velocity_target(latents, noise)).pow(2).mean())
    model.train(was_training)
    return total / levels


@torch.no_grad()
def adherence(model, ae_b: Path, prompts: int, steps: int) -> dict[str, float]:
    """Colour / direction accuracy of `prompts` prompts (evenly over the 60), guidance 5."""
    from vidcli.data.synthetic import COLOURS, DIRECTIONS, SHAPES, measure_shapes_clip
    from vidcli.generate import load_generate_recipe
    from vidcli.media import to_uint8_frames
    from vidcli.models import load_autoencoder
    from vidcli.placement import Placement
    from vidcli.sampling.phases import sample_videos
    from vidcli.sampling.pipeline import Pipeline

    sample = load_generate_recipe(None, None, [f"sample.steps={steps}"]).sample
    everything = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    # Stride 37 (coprime with the 60 prompts' 5 colours x 3 shapes x 4 directions): any n
    # consecutive picks cycle through the directions and colours (an even stride of 10 picks
    # only 'left' and 'up').
    chosen = [everything[(37 * i) % len(everything)] for i in range(prompts)]
    was_training = model.training
    pipe = Pipeline(
        ae=load_autoencoder(ae_b).eval(),
        text=text_encoder(),
        dit=model.eval(),
        placement=Placement.resolve(device="cpu"),
    )
    size = (sample.frames, sample.height, sample.width)
    colour_ok = direction_ok = both = 0
    for first in range(0, len(chosen), 10):
        batch = chosen[first : first + 10]
        texts = [f"a {c} {s} moving {d}" for c, s, d in batch]
        videos = sample_videos(pipe, sample, texts, [sample.seed] * len(batch), size)
        for (c, _s, d), video in zip(batch, videos, strict=True):
            got_c, got_d = measure_shapes_clip(to_uint8_frames(video))
            colour_ok += got_c == c
            direction_ok += got_d == d
            both += got_c == c and got_d == d
    model.train(was_training)
    n = len(chosen)
    return {"colour": colour_ok / n, "direction": direction_ok / n, "both": both / n}


# ---------------------------------------------------------------------------------------------
# Training steps (train-dit's flow loss, adapt's alignment loss)


class Trainer:
    """Batches of 8 rows (caption dropout 0.1), AdamW, constant LR after `warmup` steps."""

    def __init__(self, data: Data, patch: int, seed: int, batch: int = 8, warmup: int = 10):
        from vidcli import flow

        self.data, self.patch, self.batch, self.warmup = data, patch, batch, warmup
        _, _, t, h, w = data.latent_b.shape
        self.alpha = flow.training_shift_alpha(h, w, t)
        self.gen = torch.Generator().manual_seed(seed)

    def batch_at(self) -> dict:
        d = self.data
        rows = torch.randperm(len(d.latent_b), generator=self.gen)[: self.batch]
        tokens, pooled = d.tokens[rows].clone(), d.pooled[rows].clone()
        drop = torch.rand(len(rows), generator=self.gen) < 0.1
        tokens[drop], pooled[drop] = d.empty[0][0], d.empty[1][0]
        return {
            "latent": d.latent_b[rows],
            "source_latent": d.latent_a[rows],
            "text_tokens": tokens,
            "text_pooled": pooled,
            "generator": self.gen,
        }

    def flow(self, model, batch) -> torch.Tensor:
        from vidcli.train.dit_loss import flow_loss

        return flow_loss(model, batch, self.alpha, self.patch)[0]

    def optimizer(self, model, lr: float):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / self.warmup))
        return opt, sched

    def step(self, model, loss_fn, opt, sched) -> float:
        loss = loss_fn(model, self.batch_at())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        return float(loss.detach())


def align_loss_fn(model, source, trainer: Trainer):
    from vidcli.train.adapt import SourceEmbedders, alignment_loss

    loss = alignment_loss(
        model, SourceEmbedders(source), lambda eng, b: (trainer.flow(eng, b), {}), 1.0
    )
    return lambda m, batch: loss(m, batch, 0)[0]


def freeze_to_new_layers(model) -> None:
    from vidcli.train.adapt import _is_new

    for name, param in model.named_parameters():
        param.requires_grad = _is_new(name)


def with_lora(model, rank: int):
    from vidcli.recipe import LORA_DEFAULT_TARGETS, LoRASection
    from vidcli.train.lora import add_lora

    # The new in/out layers adapt too (as the published align+lora did).
    targets = [*LORA_DEFAULT_TARGETS, "img_in", "final_layer.linear"]
    return add_lora(model, LoRASection(rank=rank, targets=targets))


def all_trainable(model):
    for param in model.parameters():
        param.requires_grad = True
    return model


# ---------------------------------------------------------------------------------------------
# The experiment


def start_model(variant: str, source, data: Data, patch: int, seed: int, args, trainer: Trainer):
    """(model at the start of fine-tuning, stage-1 FLOPs spent, stage-1 info)."""
    from vidcli.models.mmdit import MMDiT
    from vidcli.train.adapt import least_squares_alignment, swap_autoencoder

    channels = data.latent_b.shape[1] * patch * patch
    if variant == "scratch":
        torch.manual_seed(seed)
        config = dataclasses.replace(source.config, in_channels=channels, patch_size=patch)
        return MMDiT(config), 0.0, {}
    model = swap_autoencoder(source, channels, patch, seed)
    if variant == "naive":
        return model, 0.0, {}
    if variant.startswith("lsq"):
        info = least_squares_alignment(model, source, data.latent_b, data.latent_a)
        return model, float(args.lsq_flops), info
    # Iterative stage 1: only the new layers train, through the frozen body. align+full and
    # align+lora of one seed start from the same stage 1 (run once, kept in memory).
    key = (id(data), seed)
    if key in _ALIGNED:
        state, info = _ALIGNED[key]
        model.load_state_dict(state)
        return model, float(args.align_steps * args.flops["align"]), dict(info)
    freeze_to_new_layers(model)
    loss_fn = align_loss_fn(model, source, trainer)
    opt, sched = trainer.optimizer(model, args.align_lr)
    losses = [trainer.step(model, loss_fn, opt, sched) for _ in range(args.align_steps)]
    info = {"align_loss": losses[-1] if losses else None}
    _ALIGNED[key] = ({k: v.clone() for k, v in model.state_dict().items()}, info)
    return model, float(args.align_steps * args.flops["align"]), dict(info)


_ALIGNED: dict = {}


def run_variant(name, variant, source, data, heldout, ae_b, patch, seed, args, done) -> list:
    """Fine-tune one variant; rows at the equal-steps and equal-compute points."""
    from vidcli.train.adapt import steps_for_budget

    key = lambda budget: (name, variant, budget, seed)  # noqa: E731
    if key("equal_steps") in done and key("equal_compute") in done:
        return []
    trainer = Trainer(data, patch, seed)
    model, spent, info = start_model(variant, source, data, patch, seed, args, trainer)
    lora = variant.endswith("lora")
    model = with_lora(model, args.lora_rank) if lora else all_trainable(model)
    step_cost = args.flops["lora" if lora else "full"]
    stops = {
        "equal_steps": args.steps,
        "equal_compute": steps_for_budget(args.budget, step_cost, spent),
    }
    opt, sched = trainer.optimizer(model, args.lora_lr if lora else args.lr)
    loss_fn = trainer.flow
    rows, step, losses = [], 0, []
    started = time.perf_counter()
    for budget, stop in sorted(stops.items(), key=lambda kv: kv[1]):
        while step < stop:
            losses.append(trainer.step(model, loss_fn, opt, sched))
            step += 1
        if rows and rows[-1]["steps"] == stop:  # both budgets at one point: measured once
            rows.append({**rows[-1], "budget": budget})
            continue
        row = {
            "ae_b": name,
            "channels": int(data.latent_b.shape[1]),
            "variant": variant,
            "budget": budget,
            "seed": seed,
            "settings": settings_of(args),
            "steps": stop,
            "stage1_flops": spent,
            "flops": spent + stop * step_cost,
            "train_loss": float(np.mean(losses[-10:])) if losses else None,
            "val_loss": validation_loss(model, heldout),
            **info,
        }
        if args.adherence_prompts:
            row.update(adherence(model, ae_b, args.adherence_prompts, args.sample_steps))
        row["seconds"] = time.perf_counter() - started
        log(
            f"{name} {variant} seed {seed} {budget} ({stop} steps): val {row['val_loss']:.4f} "
            f"colour {row.get('colour')} direction {row.get('direction')}"
        )
        rows.append(row)
    return rows


def measure_flops(source, data: Data, patch: int, args) -> dict[str, int]:
    """FLOPs of one full, one LoRA and one alignment step (FlopCounterMode), and of the fit."""
    from vidcli.train.adapt import least_squares_flops, step_flops, swap_autoencoder

    channels = data.latent_b.shape[1] * patch * patch
    trainer = Trainer(data, patch, seed=0)

    def one(model, loss_fn):
        batch = trainer.batch_at()
        return lambda: loss_fn(model, batch).backward()

    full = all_trainable(swap_autoencoder(source, channels, patch, 0))
    lora = with_lora(swap_autoencoder(source, channels, patch, 0), args.lora_rank)
    align = swap_autoencoder(source, channels, patch, 0)
    freeze_to_new_layers(align)
    flops = {
        "full": step_flops(one(full, trainer.flow)),
        "lora": step_flops(one(lora, trainer.flow)),
        "align": step_flops(one(align, align_loss_fn(align, source, trainer))),
    }
    tokens = data.latent_b.shape[0] * data.latent_b[0, 0].numel() // (patch * patch)
    d_a = source.config.in_channels
    flops["lsq"] = 2 * least_squares_flops(channels, d_a, tokens)  # in and out fits
    return flops


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["ae_b"], row["budget"], row["variant"]), []).append(row)
    out = []
    for (ae_b, budget, variant), got in sorted(groups.items()):
        entry = {"ae_b": ae_b, "budget": budget, "variant": variant, "seeds": len(got)}
        entry["steps"] = got[0]["steps"]
        for field in ("val_loss", "colour", "direction", "both"):
            values = [r[field] for r in got if r.get(field) is not None]
            if values:
                entry[field] = statistics.mean(values)
                entry[f"{field}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def goal(summary: list[dict]) -> dict[str, dict]:
    """Per AE B at equal compute: the best AE-Adapt variant (lowest mean held-out loss) against
    naive; met = loss >= 20 % below naive and colour and direction both higher."""
    out = {}
    for ae_b in sorted({e["ae_b"] for e in summary}):
        rows = {
            e["variant"]: e for e in summary if e["ae_b"] == ae_b and e["budget"] == "equal_compute"
        }
        adapted = [e for v, e in rows.items() if v.startswith(("align", "lsq"))]
        if "naive" not in rows or not adapted:
            continue
        naive, best = rows["naive"], min(adapted, key=lambda e: e["val_loss"])
        drop = 1.0 - best["val_loss"] / naive["val_loss"]
        higher = all(best.get(k, 0.0) > naive.get(k, 0.0) for k in ("colour", "direction"))
        out[ae_b] = {
            "best": best["variant"],
            "val_loss_drop": drop,
            "adherence_higher": higher,
            "met": drop >= 0.2 and higher,
        }
    return out


def settings_of(args) -> dict:
    return {k: getattr(args, k) for k in SETTINGS}


def parse_ae_b(values: list[str] | None) -> dict[str, Path]:
    if not values:
        return dict(DEFAULT_AE_B)
    found = {}
    for value in values:
        name, _, path = value.partition("=")
        found[name] = Path(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-b", action="append", help="NAME=PATH of an exported AE (repeat)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "ae-adapt")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--align-steps", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps (equal_steps)")
    parser.add_argument("--lr", type=float, default=3e-4, help="full fine-tuning / scratch")
    parser.add_argument("--align-lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--adherence-prompts", type=int, default=10, help="0: skip adherence")
    parser.add_argument("--sample-steps", type=int, default=8)
    parser.add_argument("--clips", type=int, default=120, help="training clips (of 240)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--plot", type=Path, help="also draw the summary as a PNG")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vidcli.models import load_autoencoder
    from vidcli.train.adapt import load_source

    missing = [f"{n}={p}" for n, p in parse_ae_b(args.ae_b).items() if not p.is_dir()]
    if missing:
        parser.error(
            f"no exported AE at {', '.join(missing)}: build it first "
            "(benchmarks/ae_adapt_aes.py, then vidcli train-ae recipes/demo-ae-f8c*.toml and "
            "the export; docs/benchmarks.md, AE-Adapt)"
        )
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.is_file() else []
    rows = [r for r in rows if r.get("settings") == settings_of(args)]
    done = {(r["ae_b"], r["variant"], r["budget"], r["seed"]) for r in rows}
    variants = [v for v in args.variants.split(",") if v]
    source = load_source(str(DEMO_DIT))
    latent_a = encode_clips(DEMO_AE, out / "latents-demo.pt", args.clips)
    tokens, pooled, empty_tokens, empty_pooled = captions(out / "captions.pt")
    tokens, pooled = tokens[: args.clips], pooled[: args.clips]
    flops_by_ae = {}
    for name, ae_path in parse_ae_b(args.ae_b).items():
        wanted = itertools.product(variants, ("equal_steps", "equal_compute"), range(args.seeds))
        if all((name, v, b, seed) in done for v, b, seed in wanted):
            continue  # every row of this AE B is in rows.jsonl
        latent_b = encode_clips(ae_path, out / f"latents-{name}.pt", args.clips)
        ae = load_autoencoder(ae_path)
        # B's patch: A's token grid (4x4 per latent frame on the demo AE at patch 2).
        patch = max(1, source.config.patch_size * latent_b.shape[-1] // latent_a.shape[-1])
        data = Data(latent_a, latent_b, tokens, pooled, (empty_tokens, empty_pooled))
        args.flops = measure_flops(source, data, patch, args)
        args.lsq_flops = args.flops["lsq"]
        args.budget = args.align_steps * args.flops["align"] + args.steps * args.flops["full"]
        flops_by_ae[name] = {**args.flops, "budget": args.budget, "patch": patch}
        log(f"{name}: {ae.latent_channels} channels, patch {patch}, FLOPs {flops_by_ae[name]}")
        heldout = held_out(ae_path)
        for seed, variant in itertools.product(range(args.seeds), variants):
            got = run_variant(
                name, variant, source, data, heldout, ae_path, patch, seed, args, done
            )
            with rows_file.open("a") as f:
                for row in got:
                    f.write(json.dumps(row) + "\n")
            rows += got
    names = set(parse_ae_b(args.ae_b))
    rows = [r for r in rows if r["ae_b"] in names and r["variant"] in variants]
    rows = [r for r in rows if r["seed"] < args.seeds]
    flops_file = out / "flops.json"
    known = json.loads(flops_file.read_text()) if flops_file.is_file() else {}
    flops_by_ae = {**known, **flops_by_ae}
    flops_file.write_text(json.dumps(flops_by_ae, indent=2) + "\n")
    result = {
        "align_steps": args.align_steps,
        "steps": args.steps,
        "seeds": args.seeds,
        "flops": flops_by_ae,
        # This invocation's wall time (rows resumed from rows.jsonl cost nothing here) and the
        # machine's 1/5/15-minute load averages at its end: the timings depend on both.
        "wall_s": time.perf_counter() - started,
        "loadavg": os.getloadavg(),
        "rows": rows,
        "summary": summarise(rows),
    }
    result["goal"] = goal(result["summary"])
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot_summary(result["summary"], args.plot)
    if args.json:
        print(json.dumps(result))
    elif args.markdown:
        print(markdown_tables(result["summary"]))
    else:
        print(format_table(result["summary"]))
    return 0


def _cell(entry: dict, field: str, pct: bool = False) -> str:
    if field not in entry:
        return "-"
    m, s = entry[field], entry[f"{field}_std"]
    return f"{100 * m:.0f} ± {100 * s:.0f} %" if pct else f"{m:.3f} ± {s:.3f}"


def markdown_tables(summary: list[dict]) -> str:
    """One table per AE B x budget: mean ± standard deviation over seeds."""
    out = []
    for (ae_b, budget), group in itertools.groupby(summary, lambda e: (e["ae_b"], e["budget"])):
        out += [
            f"**{ae_b}, {budget.replace('_', ' ')}**",
            "",
            "| variant | fine-tuning steps | held-out loss | colour | direction | seeds |",
            "|---|---|---|---|---|---|",
        ]
        for e in sorted(group, key=lambda e: VARIANTS.index(e["variant"])):
            out.append(
                f"| {e['variant']} | {e['steps']} | {_cell(e, 'val_loss')} | "
                f"{_cell(e, 'colour', True)} | {_cell(e, 'direction', True)} | {e['seeds']} |"
            )
        out.append("")
    return "\n".join(out)


def plot_summary(summary: list[dict], path: Path) -> None:
    """Per AE B (rows) and budget (columns): held-out loss per variant, mean ± std over seeds as
    bars with whiskers, colour / direction adherence written above each bar."""
    from matplotlib.figure import Figure

    from vidcli.fileio import atomic_path

    ae_bs = sorted({e["ae_b"] for e in summary})
    budgets = ("equal_compute", "equal_steps")
    fig = Figure(figsize=(11, 3.6 * len(ae_bs)), dpi=110, layout="constrained")
    axes = fig.subplots(len(ae_bs), len(budgets), squeeze=False)
    for row, ae_b in enumerate(ae_bs):
        for col, budget in enumerate(budgets):
            ax = axes[row][col]
            got = [e for e in summary if e["ae_b"] == ae_b and e["budget"] == budget]
            got.sort(key=lambda e: VARIANTS.index(e["variant"]))
            xs = range(len(got))
            means = [e["val_loss"] for e in got]
            ax.bar(xs, means, yerr=[e["val_loss_std"] for e in got], capsize=3, color="#4c78a8")
            for x, e in zip(xs, got, strict=True):
                adherence = f"{100 * e.get('colour', 0):.0f}/{100 * e.get('direction', 0):.0f}"
                top = e["val_loss"] + e["val_loss_std"]
                ax.annotate(
                    adherence, (x, top), (0, 3), "data", "offset points", ha="center", fontsize=8
                )
            ax.set_xticks(list(xs), [f"{e['variant']}\n{e['steps']} st" for e in got], fontsize=8)
            ax.set_ylim(0, 1.15 * max(means, default=1))
            ax.set_ylabel("held-out flow loss")
            ax.set_title(f"{ae_b}, {budget.replace('_', ' ')} (colour/direction %)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def format_table(summary: list[dict]) -> str:
    return "\n".join(
        f"{e['ae_b']:<7} {e['budget']:<13} {e['variant']:<11} {e['steps']:>4} steps  "
        f"val {_cell(e, 'val_loss')}  colour {_cell(e, 'colour', True)}  "
        f"direction {_cell(e, 'direction', True)}  (n={e['seeds']})"
        for e in summary
    )


if __name__ == "__main__":
    sys.exit(main())
