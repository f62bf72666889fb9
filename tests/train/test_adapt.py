"""AE-Adapt (`[adapt]` of train-dit): the swap, the alignment loss, exact resume in both stages.

A tiny source DiT (patch 2 on 8-channel latents) moves to a 4-channel AE at patch 1; both latent
sets are written as prepare-data shards of the same 8 manifest rows (random latents: what is
tested is the training machinery, not the AEs).
"""

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from test_train import losses, recipe_args, vidcli, weights

from vidcli.data.latents import SHARD_SCHEMA, shard_path
from vidcli.data.parquet import encode_tensor, write_parquet_atomic
from vidcli.errors import UsageError
from vidcli.models.mmdit import build_dit, load_dit, save_dit
from vidcli.recipe import load_recipe
from vidcli.train import adapt

ROWS = 8


def write_latents(folder: Path, latents: torch.Tensor, order: list[int]) -> None:
    """One prepare-data shard; row k of the shard is manifest row order[k]."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(ROWS, 8, 384, generator=gen)  # same captions for both AEs
    records = []
    for index in order:
        records.append(
            {
                "index": index,
                "path": f"clip{index}.mp4",
                "caption": f"clip {index}",
                "bucket": "",
                **encode_tensor("latent", latents[index]),
                **encode_tensor("text_tokens", tokens[index]),
                **encode_tensor("text_mask", torch.ones(8, dtype=torch.bool)),
                **encode_tensor("text_pooled", tokens[index].mean(0)),
            }
        )
    write_parquet_atomic(pa.Table.from_pylist(records, schema=SHARD_SCHEMA), shard_path(folder, 0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    torch.manual_seed(0)
    clips = torch.randn(ROWS, 4, 2, 2, 2)
    # A's latents: 8 channels at 4x4 (patch 2 -> the same 2x2x2 token grid as B at patch 1).
    z_a = torch.nn.functional.interpolate(clips, scale_factor=(1, 2, 2)).repeat(1, 2, 1, 1, 1)
    z_a = z_a + 0.1 * torch.randn_like(z_a)
    write_latents(root / "latents-a", z_a, list(range(ROWS)))
    # B's shard lists the rows in another order: pairing must go by manifest index.
    write_latents(root / "latents-b", clips, list(reversed(range(ROWS))))
    source = build_dit("mmdit-tiny", in_channels=32, patch_size=2, vec_in_dim=384)
    save_dit(source, root / "source")
    return root


def adapt_args(root: Path, out: Path, **extra: object) -> list[str]:
    values = {
        "ae.path": "",
        "ae.preset": "dc-ae-tiny",
        "dit.preset": "mmdit-tiny",
        "dit.patch_size": 1,
        "data.latents": str(root / "latents-b"),
        "adapt.source": str(root / "source"),
        "adapt.source_latents": str(root / "latents-a"),
        "train.output": str(out),
        "train.batch_size": 2,
        "train.lr_schedule": "constant",
        "train.warmup_steps": 0,
        "train.lr": 3e-3,
        "train.log_every": 1,
        "train.ckpt_every": 2,
        "text.max_length": 8,
    }
    values.update(extra)
    return recipe_args("demo-dit.toml", values)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, name: str) -> None:
    wa, wb = weights(a, name), weights(b, name)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-6, atol=1e-7)


def test_swap_keeps_the_body_and_replaces_latent_layers(setup):
    source = load_dit(setup / "source")
    swapped = adapt.swap_autoencoder(source, in_channels=4, patch_size=1, seed=0)
    assert swapped.config.in_channels == 4 and swapped.config.patch_size == 1
    assert swapped.img_in.weight.shape == (64, 4) and swapped.final_layer.linear.weight.shape == (
        4,
        64,
    )
    assert swapped.cond_in.weight.shape == (64, 5)  # 1 mask value + 4 latent values per token
    src = source.state_dict()
    for key, value in swapped.state_dict().items():
        if not key.startswith(adapt.NEW_LAYERS):
            assert torch.equal(value, src[key]), key
    # A zero condition embeds as before: zero weight, the source's bias.
    assert not swapped.cond_in.weight.any()
    assert torch.equal(swapped.cond_in.bias, source.cond_in.bias)
    # final_layer's modulation is kept: it reads the conditioning vector, not latents.
    assert torch.equal(
        swapped.final_layer.adaLN_modulation[1].weight,
        source.final_layer.adaLN_modulation[1].weight,
    )


def test_pool_to_averages_a_finer_source_grid():
    h_a = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 32, 1)  # grid (2, 4, 4), D = 1
    z_a, z_b = torch.zeros(1, 1, 2, 4, 4), torch.zeros(1, 1, 2, 2, 2)
    pooled = adapt._pool_to(h_a, z_a, 1, z_b, 1)
    # The first B token averages A's tokens (0,0..1,0..1): 0, 1, 4, 5.
    assert pooled.shape == (1, 8, 1) and pooled[0, 0, 0] == pytest.approx(2.5)
    assert pooled[0, 7, 0] == pytest.approx((26 + 27 + 30 + 31) / 4)


def test_pairs_rows_by_manifest_index(setup):
    from vidcli.data.datasets import LatentDataset

    recipe = load_recipe(
        None,
        [
            f"data.latents={json.dumps(str(setup / 'latents-b'))}",
            f"adapt.source_latents={json.dumps(str(setup / 'latents-a'))}",
            "train.batch_size=4",
        ],
    )
    target = LatentDataset(setup / "latents-b")
    source = {
        row["index"]: row["latent"]
        for row in map(LatentDataset(setup / "latents-a").__getitem__, range(ROWS))
    }

    def batch_at(index):  # what train-dit's batches hold: B's latents of this step's rows
        rows = adapt.train_data.rows_for_step(index, 4, 0, 1, ROWS, 0)
        return {"latent": torch.stack([target[r]["latent"] for r in rows]), "rows": rows}

    batch = adapt.paired_batches(recipe, batch_at, rank=0, world=1)(3)
    for row, got in zip(batch["rows"], batch["source_latent"], strict=True):
        assert torch.equal(got, source[target[row]["index"]])


def test_recipe_mistakes_are_reported_together(tmp_path):
    recipe = load_recipe(None, ["adapt.source=x", "lora.rank=4", "adapt.aligned=y"])
    with pytest.raises(UsageError, match=r"\[data\] latents.*source_latents.*\[lora\].*aligned"):
        adapt.check_recipe(recipe)


def test_align_loss_falls_body_stays_frozen_and_resume_is_exact(setup, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    fast = {"train.lr": 2e-2}
    vidcli("train-dit", *adapt_args(setup, straight, **fast, **{"train.max_steps": 6}))
    vidcli("train-dit", *adapt_args(setup, split, **fast, **{"train.max_steps": 4}))
    resumed = vidcli(
        "train-dit",
        *adapt_args(setup, split, **fast, **{"train.max_steps": 6}),
        "--resume",
        "latest",
        "--json",
    )
    assert json.loads(resumed.stdout)["resumed_from"].endswith("step-0000004")
    assert losses(straight) == pytest.approx(losses(split), rel=1e-6, abs=1e-7)
    for name in ("model.safetensors", "ema.safetensors"):
        assert_same_weights(
            straight / "checkpoints" / "step-0000006", split / "checkpoints" / "step-0000006", name
        )

    records = metrics(straight)
    assert records[-1]["align_embed"] < 0.8 * records[0]["align_embed"], records
    assert records[-1]["align_noise"] < records[0]["align_noise"]

    trained = load_dit(straight / "checkpoints" / "step-0000006")
    source = load_file(str(setup / "source" / "model.safetensors"))
    for key, value in trained.state_dict().items():
        if not key.startswith(adapt.NEW_LAYERS):
            assert torch.equal(value, source[key]), f"{key} changed in stage 1"


def test_finetune_with_lora_resumes_exactly_from_the_aligned_checkpoint(setup, tmp_path):
    align = tmp_path / "align"
    vidcli("train-dit", *adapt_args(setup, align, **{"train.max_steps": 2}))
    stage2 = {
        "adapt.stage": "finetune",
        "adapt.aligned": str(align / "checkpoints" / "step-0000002"),
        "lora.rank": 4,
        "lora.alpha": 8.0,
    }
    straight, split = tmp_path / "straight", tmp_path / "split"
    vidcli("train-dit", *adapt_args(setup, straight, **stage2, **{"train.max_steps": 4}))
    vidcli("train-dit", *adapt_args(setup, split, **stage2, **{"train.max_steps": 2}))
    vidcli(
        "train-dit",
        *adapt_args(setup, split, **stage2, **{"train.max_steps": 4}),
        "--resume",
        "latest",
    )
    assert losses(straight) == pytest.approx(losses(split), rel=1e-6, abs=1e-7)
    a, b = straight / "checkpoints" / "step-0000004", split / "checkpoints" / "step-0000004"
    for name in ("model.safetensors", "ema.safetensors", "lora.safetensors"):
        assert_same_weights(a, b, name)

    # model.safetensors is the aligned model with the adapters merged: it loads alone.
    merged = load_dit(a)
    aligned = load_dit(align / "checkpoints" / "step-0000002")
    lora = load_file(str(a / "lora.safetensors"))
    key = "double_blocks.0.img_attn.q_proj"
    expected = aligned.state_dict()[f"{key}.weight"] + 2.0 * (
        lora[f"transformer.{key}.lora_B.weight"] @ lora[f"transformer.{key}.lora_A.weight"]
    )
    torch.testing.assert_close(merged.state_dict()[f"{key}.weight"], expected)
    assert lora[f"transformer.{key}.lora_B.weight"].abs().max() > 0  # the adapters trained
    torch.testing.assert_close(merged.img_in.weight, aligned.img_in.weight, rtol=0, atol=0)

    # generate samples a LoRA run's EMA: its adapter-layout file is merged on load.
    from vidcli.sampling.pipeline import load_ema_weights

    sampled = load_dit(a)
    assert load_ema_weights(sampled, a)
    ema = load_file(str(a / "ema.safetensors"))
    expected = ema[f"{key}.base_layer.weight"] + 2.0 * (
        ema[f"{key}.lora_B.default.weight"] @ ema[f"{key}.lora_A.default.weight"]
    )
    torch.testing.assert_close(sampled.state_dict()[f"{key}.weight"], expected)


def stacked_latents(folder: Path) -> torch.Tensor:
    """Every row's latent (N, C, T, H, W), in manifest-index order."""
    from vidcli.data.datasets import LatentDataset

    rows = sorted(map(LatentDataset(folder).__getitem__, range(ROWS)), key=lambda r: r["index"])
    return torch.stack([row["latent"] for row in rows]).float()


def test_least_squares_stage_is_the_closed_form_fit_and_finetune_starts_from_it(setup, tmp_path):
    """`stage = "least_squares"` streams the rows 3 at a time: its checkpoint holds the weights
    `least_squares_alignment` fits on all latents at once (B's shard lists the rows in reverse)."""
    source = load_dit(setup / "source")
    with torch.no_grad():  # a trained condition branch, so that cond_in's fit shows
        source.cond_in.weight.normal_(generator=torch.Generator().manual_seed(2))
    save_dit(source, tmp_path / "source")
    lsq = tmp_path / "lsq"
    stage1 = {"adapt.stage": "least_squares", "adapt.source": str(tmp_path / "source")}
    done = vidcli(
        "train-dit", *adapt_args(setup, lsq, **stage1, **{"train.batch_size": 3}), "--json"
    )
    result = json.loads(done.stdout)
    folder = lsq / "checkpoints" / "latest"
    assert result["steps"] == 0 and result["checkpoint"].endswith("step-0000000")
    from vidcli.train.checkpoint import verify_manifest

    verify_manifest(folder.resolve())

    direct = adapt.swap_autoencoder(source, in_channels=4, patch_size=1, seed=0)
    z_b, z_a = stacked_latents(setup / "latents-b"), stacked_latents(setup / "latents-a")
    report = adapt.least_squares_alignment(direct, source, z_b, z_a, ridge=1e-4)
    # A's latent is B's, upsampled and repeated, plus 10 % noise: B's tokens predict A's up to
    # that noise (1 % of the energy), and A's 32 values per token average it out for B's.
    assert 0.002 < report["fit_in"] < 0.02 and report["fit_out"] < report["fit_in"]
    (record,) = metrics(lsq)
    for key, value in report.items():
        assert record[key] == pytest.approx(value, rel=1e-9, abs=1e-12)
        assert result["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12)
    assert record["samples"] == ROWS and record["tokens"] == ROWS * 8
    fitted = load_dit(folder)
    want = direct.state_dict()
    for key, value in fitted.state_dict().items():
        torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-6, msg=key)
    assert fitted.cond_in.weight.abs().max() > 0.1  # cond_in_A ∘ M_cond (M_cond is no zero)

    tuned = tmp_path / "tuned"
    stage2 = {"adapt.stage": "finetune", "adapt.aligned": str(folder), "lora.rank": 4}
    stage2["adapt.source"] = stage1["adapt.source"]
    vidcli("train-dit", *adapt_args(setup, tuned, **stage2, **{"train.max_steps": 2}))
    merged = load_dit(tuned / "checkpoints" / "step-0000002")
    # LoRA leaves img_in alone: the fine-tuned model still embeds B's tokens with the fit.
    torch.testing.assert_close(merged.img_in.weight, fitted.img_in.weight, rtol=0, atol=0)
    assert not torch.equal(
        merged.double_blocks[0].img_attn.q_proj.weight,
        fitted.double_blocks[0].img_attn.q_proj.weight,
    )


@pytest.mark.parametrize(
    ("extra", "options", "message"),
    [
        ({"dit.patch_size": 2}, (), r"\(2, 2, 2\).*\(2, 1, 1\) at patch 2.*\[dit\] patch_size"),
        ({"adapt.source_latents": ""}, (), r"stage 'least_squares' needs A's latents"),
        # Refused before any rank is spawned.
        ({}, ("--nproc", "2"), r"stage 'least_squares' is one closed-form pass in one process"),
        ({}, ("--resume", "latest"), r"--resume latest: .*no steps to resume"),
    ],
)
def test_least_squares_stage_refuses_in_one_line(setup, tmp_path, extra, options, message):
    values = {"adapt.stage": "least_squares", **extra}
    run = adapt_args(setup, tmp_path / "run", **values)
    done = vidcli("train-dit", *run, *options, check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoints").exists()
