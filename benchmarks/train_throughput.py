"""train-dit throughput on each AE's latents: recipes/hcae.toml vs recipes/baseline-f8t4.toml.

Both recipes train the same DiT; only the AE (and so the latent shape and patch size) differs.
Training reads pre-extracted latents, so the AE is not in the loop: this writes latent shards of
each AE's exact shape (random values: speed does not depend on them; the real ones come from
`vidcli prepare-data --encode`) and runs the real `vidcli train-dit` on both.

Method:
- start-up is excluded: each run trains `--warmup` steps first (engine build, first allocations,
  first shard reads), logs every step, and its samples/s is counted over the `--steps` steps
  after the warm-up only, from the run's metrics.jsonl;
- the latents are spread over `--shards` Parquet shards, which the trainer reads in its own
  shuffled order, as real training does (a shard is decoded whenever the order enters it);
- the recipes run interleaved (baseline, hcae, baseline, hcae, ... for `--rounds` rounds), and
  the speedup is the median of the per-round ratios, so a neighbouring job slows both alike.

    python benchmarks/train_throughput.py --dit mmdit-s --frames 16 --size 256 --steps 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from vidcli.data.parquet import encode_tensor, write_parquet_atomic
from vidcli.models import build_autoencoder

REPO = Path(__file__).resolve().parents[1]
ROWS = (("baseline-f8t4", "recipes/baseline-f8t4.toml"), ("hcae", "recipes/hcae.toml"))
"""(name, recipe) in the order each round runs them; the first is the baseline."""
TEXT_DIM = 384
"""MiniLM's token and pooled width."""


def write_shards(
    folder: Path, shape: tuple[int, ...], shards: int, rows_per_shard: int, text_tokens: int
) -> None:
    """`shards` latents-NNNNN.parquet files of random latents of `shape` with text embeddings."""
    gen = torch.Generator().manual_seed(0)
    for s in range(shards):
        records = []
        for r in range(rows_per_shard):
            i = s * rows_per_shard + r
            record = {"index": i, "path": f"clip-{i}.mp4", "caption": f"clip {i}", "bucket": None}
            record |= encode_tensor("latent", torch.randn(shape, generator=gen))
            record |= encode_tensor(
                "text_tokens", torch.randn(text_tokens, TEXT_DIM, generator=gen)
            )
            record |= encode_tensor("text_mask", torch.ones(text_tokens, dtype=torch.bool))
            record |= encode_tensor("text_pooled", torch.randn(TEXT_DIM, generator=gen))
            records.append(record)
        write_parquet_atomic(pa.Table.from_pylist(records), folder / f"latents-{s:05d}.parquet")


def window_rate(records: list[dict[str, Any]], warmup: int, samples_per_step: int) -> dict:
    """Throughput over the steps after `warmup`, from per-step log records (log_every = 1).

    Each record's samples_per_s covers its own step, so its time is samples_per_step / rate.
    """
    timed = [r for r in records if r["step"] > warmup]
    if not timed:
        raise ValueError(f"no logged step after the {warmup} warm-up steps")
    seconds = sum(samples_per_step / r["samples_per_s"] for r in timed)
    samples = samples_per_step * len(timed)
    tokens_per_sample = timed[0]["tokens_per_s"] / timed[0]["samples_per_s"]
    return {
        "steps": len(timed),
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_s": samples * tokens_per_sample / seconds,
    }


def train_once(recipe_path: str, latents: Path, output: Path, args: argparse.Namespace) -> dict:
    """One `vidcli train-dit` run; its throughput after the warm-up steps."""
    sets = {
        "data.latents": str(latents),
        # train-dit builds [ae] to check the latents' provenance: a fresh preset (no weights to
        # download) matches these unrecorded random shards.
        "ae.path": "",
        "dit.preset": args.dit,
        "dit.grad_checkpointing": args.grad_checkpointing,
        "text.backend": "minilm",
        "text.max_length": args.text_tokens,
        "train.output": str(output),
        "train.max_steps": args.warmup + args.steps,
        "train.batch_size": args.batch_size,
        "train.log_every": 1,
        "train.ckpt_every": 10**6,
        "train.i2v_ratio": 0.0,
        "launcher.precision": args.precision,
    }
    if args.dit_blocks:  # a full-width preset cut to DOUBLE,SINGLE blocks (gpu-anchors.md)
        double, single = (int(n) for n in args.dit_blocks.split(","))
        sets["dit.overrides"] = {"depth": double, "depth_single_blocks": single}
    command = [sys.executable, "-m", "vidcli", "train-dit", str(REPO / recipe_path)]
    for key, value in sets.items():
        if isinstance(value, dict):  # a TOML inline table, not JSON
            literal = "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + " }"
        else:
            literal = json.dumps(value)
        command += ["--set", f"{key}={literal}"]
    done = subprocess.run([*command, "--json", "--quiet"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train-dit {recipe_path} failed:\n{done.stderr}")
    lines = (output / "metrics.jsonl").read_text().splitlines()
    return window_rate([json.loads(line) for line in lines], args.warmup, args.batch_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", default="mmdit-s")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=12, help="timed steps after the warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per recipe")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rows-per-shard", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=32)
    parser.add_argument("--dit-blocks", default="", help="DOUBLE,SINGLE blocks to keep, e.g. 2,4")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--grad-checkpointing", action="store_true", help="every block")
    args = parser.parse_args(argv)

    from vidcli.recipe import load_recipe

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vidcli-throughput-") as tmp:
        for name, recipe_path in ROWS:
            recipe = load_recipe(REPO / recipe_path)
            shape = build_autoencoder(recipe.ae.preset, device="meta").latent_shape(
                args.frames, args.size, args.size
            )
            write_shards(
                Path(tmp) / name, shape, args.shards, args.rows_per_shard, args.text_tokens
            )
            results[name] = {"latent_shape": list(shape), "patch": recipe.dit.patch_size}
            results[name]["rounds"] = []
        for r in range(args.rounds):
            for name, recipe_path in ROWS:
                out = Path(tmp) / f"run-{name}-{r}"
                results[name]["rounds"].append(train_once(recipe_path, Path(tmp) / name, out, args))
    base = results[ROWS[0][0]]["rounds"]
    for row in results.values():
        rates = [x["samples_per_s"] for x in row["rounds"]]
        row["samples_per_s"] = statistics.median(rates)
        row["tokens_per_s"] = statistics.median(x["tokens_per_s"] for x in row["rounds"])
        pairs = zip(row["rounds"], base, strict=True)
        ratios = [x["samples_per_s"] / b["samples_per_s"] for x, b in pairs]
        row["speedup"] = statistics.median(ratios)
    for name, row in results.items():
        print(
            f"{name:<14} latent {row['latent_shape']} patch {row['patch']}: "
            f"{row['samples_per_s']:.3f} samples/s, {row['tokens_per_s']:.0f} tokens/s, "
            f"x{row['speedup']:.2f} (median of {args.rounds} interleaved rounds, "
            f"{args.steps} steps after {args.warmup} warm-up)",
            file=sys.stderr,
        )
    print(json.dumps({"settings": vars(args), "rows": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
