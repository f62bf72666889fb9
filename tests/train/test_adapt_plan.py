"""`train-dit --plan` for `[adapt] stage = "least_squares"`: Gram matrices, one batch, one pass.

The closed-form stage takes no step, so its plan has no gradients or optimizer states; its
bytes are checked against a hand count and against the peak of the real fit, measured while it
streams the same batches the stage would.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from test_adapt import adapt_args, write_latents
from test_train import vidcli
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.errors import ShapeError
from vidcli.models.mmdit import build_dit, save_dit
from vidcli.plans import adapt as plan_adapt
from vidcli.plans import meta
from vidcli.plans.sizes import GB, RESERVED_GB
from vidcli.train import adapt

ROWS = 8  # write_latents' row count
B_SHAPE, A_SHAPE = (4, 2, 16, 16), (8, 2, 32, 32)  # A at patch 2: B's 2x16x16 token grid


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt-plan")
    gen = torch.Generator().manual_seed(0)
    write_latents(root / "latents-b", torch.randn(ROWS, *B_SHAPE, generator=gen), list(range(ROWS)))
    write_latents(root / "latents-a", torch.randn(ROWS, *A_SHAPE, generator=gen), list(range(ROWS)))
    source = build_dit("mmdit-tiny", in_channels=32, patch_size=2, vec_in_dim=384)
    assert source.cond_in is not None  # the condition fit is planned too
    save_dit(source, root / "source")
    return root


def plan_args(root: Path, batch: int = 3, **extra: object) -> list[str]:
    values = {"adapt.stage": "least_squares", "train.batch_size": batch, **extra}
    return ["train-dit", *adapt_args(root, root / "run", **values), "--plan"]


def plan_json(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_counts_grams_batch_and_pass_in_closed_form(shards):
    plan = plan_json(*plan_args(shards, batch=3), "--gpu-memory", "80")
    assert plan["stage"] == "least_squares" and plan["world"] == 1
    assert "optimizer_gb" not in plan and "grads_gb" not in plan
    d_b, d_a = 4 * 1 * 1, 8 * 2 * 2  # C·p² at patch 1 (the recipe's) and 2 (the source's)
    e_b, e_a = d_b + 1, d_a + 4  # condition tokens carry a mask channel
    grams = 8 * (d_b**2 + d_b * d_a + d_a**2) + 8 * (e_b**2 + e_b * e_a + e_a**2)
    assert plan["gram_gb"] * GB == pytest.approx(grams, rel=1e-12)
    # 8 rows, 3 at a time: the largest batch holds 3 pairs of float32 latents.
    z = 4 * 3 * (4 * 2 * 16 * 16 + 8 * 2 * 32 * 32)
    assert plan["batch_gb"] * GB == pytest.approx(z, rel=1e-12)
    tokens = ROWS * 2 * 16 * 16
    assert plan["rows"] == ROWS and plan["tokens"] == tokens
    assert plan["token_width_b"] == d_b and plan["token_width_a"] == d_a
    # Adding a batch: z, its float32 tokens and float64 copies (3 z), 3 token Gram sets, the
    # condition Grams; the condition add: z, 3 z with the mask channel, 3 condition Gram sets.
    g, g_cond = 8 * (d_b**2 + d_b * d_a + d_a**2), 8 * (e_b**2 + e_b * e_a + e_a**2)
    z_cond = 4 * 3 * (5 * 2 * 16 * 16 + 9 * 2 * 32 * 32)
    peak = max(4 * z + 3 * g + g_cond, z + 3 * z_cond + g + 3 * g_cond)
    assert plan["peak_gb"] == pytest.approx(peak / GB + RESERVED_GB, rel=1e-12)
    assert plan["fits"]
    flops = 2 * tokens * (d_b**2 + d_b * d_a + d_a**2 + e_b**2 + e_b * e_a + e_a**2)
    flops += sum(2 * d**3 / 3 + 2 * d * d * o for d, o in ((d_b, d_a), (d_a, d_b), (e_b, e_a)))
    assert plan["flops"] == pytest.approx(flops, rel=1e-12)
    source = build_dit("mmdit-tiny", in_channels=32, patch_size=2, vec_in_dim=384)
    swap = adapt.swap_autoencoder(source, in_channels=d_b, patch_size=1, seed=0)
    new = sum(p.numel() for n, p in swap.named_parameters() if adapt._is_new(n))
    assert plan["source_params"] == meta.param_count(source)
    assert plan["dit_host_gb"] * GB == pytest.approx(4 * (meta.param_count(source) + new))
    on_disk = sum(f.stat().st_size for f in shards.glob("latents-*/latents-*.parquet"))
    assert plan["shards_gb"] * GB == pytest.approx(on_disk)


def test_plan_is_the_measured_peak_of_the_fit(shards):
    """The fit streamed as the stage streams it (3 rows, 3, then 2), every tensor it makes
    counted, the solves included: the plan's bytes are that peak."""
    source = build_dit("mmdit-tiny", in_channels=32, patch_size=2, vec_in_dim=384)
    swap = adapt.swap_autoencoder(source, in_channels=4, patch_size=1, seed=0)
    fit = adapt.LeastSquaresFit(swap, source)

    def stream() -> None:
        gen = torch.Generator().manual_seed(0)
        for n in (3, 3, 2):
            z_b, z_a = (
                torch.randn(n, *B_SHAPE, generator=gen),
                torch.randn(n, *A_SHAPE, generator=gen),
            )
            fit.add(z_b, z_a)
        fit.apply(1e-4)

    measured = meta.measure_peak(stream)
    plan = plan_json(*plan_args(shards, batch=3))
    planned = (plan["peak_gb"] - RESERVED_GB) * GB
    # The peak is the second batch's condition add: the Gram sums of the first are held.
    assert planned == pytest.approx(measured, rel=1e-12)


@pytest.mark.parametrize(("n", "grid"), [(3, (2, 4, 4)), (1, (1, 1, 1))])
@pytest.mark.parametrize(("p_b", "p_a"), [(1, 2), (2, 1), (1, 1)])
@pytest.mark.parametrize("conditioned", [True, False])
def test_fit_peak_is_the_peak_on_real_latents(n, grid, p_b, p_a, conditioned):
    """Packing copies at patch > 1 and is a view at patch 1; the meta count of the adds sees
    either. With one token a batch the solves are the peak: planned as an upper bound."""
    c_b, c_a = 4, 8
    source = build_dit(
        "mmdit-tiny",
        in_channels=c_a * p_a**2,
        patch_size=p_a,
        vec_in_dim=384,
        cond_embed=conditioned,
    )
    swap = adapt.swap_autoencoder(source, in_channels=c_b * p_b**2, patch_size=p_b, seed=0)
    latent_b = (c_b, grid[0], grid[1] * p_b, grid[2] * p_b)
    latent_a = (c_a, grid[0], grid[1] * p_a, grid[2] * p_a)
    fit = adapt.LeastSquaresFit(swap, source)

    def two_adds_and_solve() -> None:
        z_b, z_a = torch.randn(n, *latent_b), torch.randn(n, *latent_a)
        fit.add(z_b, z_a)
        fit.add(z_b, z_a)
        fit.apply(1e-4)

    planned = plan_adapt.fit_peak_bytes(n, latent_b, latent_a, swap, source)
    measured = meta.measure_peak(two_adds_and_solve)
    if n == 3:
        assert planned == measured
    else:
        assert measured <= planned <= 2 * measured


def test_plan_text_has_no_optimizer_states(shards):
    result = CliRunner().invoke(app, [*plan_args(shards), "--gpu-memory", "80"])
    assert result.exit_code == 0, result.output
    assert "least_squares" in result.stdout and "one pass over 8 rows" in result.stdout
    assert not re.search(r"optimizer|adamw|zero-|grads|activations", result.stdout, re.I)


def test_plan_and_run_refuse_several_processes_in_the_same_line(shards, tmp_path):
    plan = vidcli(*plan_args(shards), "--nproc", "2", check=False)
    run = vidcli(*plan_args(shards)[:-1], "--nproc", "2", check=False)
    lines = []
    for done in (plan, run):
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "Traceback" not in done.stderr
        lines.append(errors[0])
    assert lines[0] == lines[1] == f"Error: {adapt.ONE_PROCESS}"
    assert not (shards / "run" / "checkpoints").exists()


def test_plan_refuses_unequal_token_grids_like_the_fit(shards):
    """B at patch 2 gives a 2x8x8 token grid, A's 2x16x16: the plan refuses as the fit would."""
    with pytest.raises(ShapeError) as fit_error:
        adapt.paired_token_grid(B_SHAPE, 2, A_SHAPE, 2)
    result = CliRunner().invoke(app, plan_args(shards, **{"dit.patch_size": 2}))
    assert result.exit_code == 2
    assert str(fit_error.value) in result.output
