"""train-dit throughput on each AE's latents: recipes/hcae.toml vs recipes/baseline-f8t4.toml.

Both recipes train the same DiT; only the AE (and so the latent shape and patch size) differs.
Training reads pre-extracted latents, so the AE is not in the loop: this writes latent shards of
each AE's exact shape (random values: speed does not depend on them; the real ones come from
`vidcli prepare-data --encode`), runs the real `vidcli train-dit` on both, and reports the
samples/s and tokens/s the trainer logged.

    python benchmarks/train_throughput.py --dit mmdit-s --frames 16 --size 256 --steps 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import torch

from vidcli.data.parquet import encode_tensor, write_parquet_atomic
from vidcli.models.dcae import build_autoencoder

REPO = Path(__file__).resolve().parents[1]
ROWS = (("hcae", "recipes/hcae.toml"), ("baseline-f8t4", "recipes/baseline-f8t4.toml"))


def write_latents(folder: Path, shape: tuple[int, ...], rows: int, text_tokens: int) -> None:
    gen = torch.Generator().manual_seed(0)
    records = []
    for i in range(rows):
        record = {"index": i, "path": f"clip-{i}.mp4", "caption": f"clip {i}", "bucket": None}
        record |= encode_tensor("latent", torch.randn(shape, generator=gen))
        record |= encode_tensor("text_tokens", torch.randn(text_tokens, 384, generator=gen))
        record |= encode_tensor("text_mask", torch.ones(text_tokens, dtype=torch.bool))
        record |= encode_tensor("text_pooled", torch.randn(384, generator=gen))
        records.append(record)
    write_parquet_atomic(pa.Table.from_pylist(records), folder / "latents-00000.parquet")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dit", default="mmdit-s")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--text-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    from vidcli.recipe import load_recipe

    results = {}
    with tempfile.TemporaryDirectory(prefix="vidcli-throughput-") as tmp:
        for name, recipe_path in ROWS:
            recipe = load_recipe(REPO / recipe_path)
            with torch.device("meta"):
                ae = build_autoencoder(recipe.ae.preset)
            shape = ae.latent_shape(args.frames, args.size, args.size)
            latents = Path(tmp) / name
            write_latents(latents, shape, rows=16, text_tokens=args.text_tokens)
            sets = {
                "data.latents": str(latents),
                "dit.preset": args.dit,
                "dit.grad_checkpointing": False,
                "text.backend": "minilm",
                "text.max_length": args.text_tokens,
                "train.output": str(Path(tmp) / f"run-{name}"),
                "train.max_steps": args.steps,
                "train.batch_size": args.batch_size,
                "train.log_every": args.steps,
                "train.ckpt_every": 10**6,
                "train.i2v_ratio": 0.0,
                "launcher.precision": "fp32",
            }
            command = [sys.executable, "-m", "vidcli", "train-dit", str(REPO / recipe_path)]
            for key, value in sets.items():
                command += ["--set", f"{key}={json.dumps(value)}"]
            done = subprocess.run([*command, "--json", "--quiet"], capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                return 1
            # The last log window excludes the first steps' start-up cost.
            metrics = json.loads(done.stdout)["metrics"]
            results[name] = {
                "latent_shape": list(shape),
                "patch": recipe.dit.patch_size,
                "samples_per_s": metrics["samples_per_s"],
                "tokens_per_s": metrics["tokens_per_s"],
            }
    base = results["baseline-f8t4"]["samples_per_s"]
    for name, row in results.items():
        row["speedup"] = row["samples_per_s"] / base
        print(
            f"{name:<14} latent {row['latent_shape']} patch {row['patch']}: "
            f"{row['samples_per_s']:.3f} samples/s, {row['tokens_per_s']:.0f} tokens/s, "
            f"x{row['speedup']:.2f}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
