"""`generate --compile-ae` / `[sample] compile_ae`: the DC-AE decoder compiled under inductor
freezing (`vidcli.models.dcae.compiled`), its numbers against eager, its timings, and the runs
it refuses up front.

Inductor compiles on the first decode; both inductor tests decode the same tiny DC-AE weights at
the same latent size, so the second finds inductor's cache warm (default cache folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tolerances import assert_rel_l2
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.models import build_autoencoder, build_dit, load_autoencoder, save_autoencoder, save_dit
from vidcli.models.dcae import TilingConfig
from vidcli.models.dcae.compiled import compile_autoencoder, compile_stats
from vidcli.placement import Placement
from vidcli.plans.generate import plan_generate
from vidcli.recipe import load_recipe
from vidcli.sampling.compatibility import check_compile_ae

COMPILED_RTOL = 1e-5
"""Relative L2 of the compiled decode against eager, fp32. Freezing folds and fuses the convs'
bias, activation and residual adds and oneDNN runs prepacked weights, so sums round in another
order: measured 8e-7 to 1.1e-6 on the tiny DC-AE (1 thread); a wrong constant or a stale weight
is O(1)."""

OPENSORA = "recipes/opensora-v2-hcae.toml"
"""Open-Sora 2.0 (11B MMDiT, video DC-AE f32t4c128, Flux t2i stage): planned on `meta`."""

LATENT = (1, 8, 2, 2, 2)
"""The tiny DC-AE's latent of 8 frames at 64 x 64 px: the generate runs below decode this size."""


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny DC-AE (32x spatial, 4x time, 8 channels) and a matching tiny MMDiT, saved."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    save_autoencoder(build_autoencoder("dc-ae-tiny"), root / "ae")
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=384, vec_in_dim=384)
    save_dit(dit, root / "dit")
    return root


def recipe_file(tmp_path: Path, weights: Path, ae: str = "") -> Path:
    ae = ae or f'preset = "dc-ae-tiny"\npath = "{weights / "ae"}"\ntiling = false'
    path = tmp_path / "tiny.toml"
    path.write_text(
        f"""
[ae]
{ae}

[dit]
path = "{weights / "dit"}"

[text]
max_length = 8

[sample]
steps = 2
frames = 8
height = 64
width = 64
"""
    )
    return path


def generate(*args: str):
    return CliRunner().invoke(app, ["generate", *args])


def frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_compiled_decoder_matches_eager_untiled_and_tiled(tiny_weights):
    ae = load_autoencoder(tiny_weights / "ae")
    torch.manual_seed(1)
    z, wide = torch.randn(LATENT), torch.randn(1, 8, 2, 4, 4)
    # 64 px tiles (2 latents) at overlap 0.25 over 4 latents: spans (0,2), (1,3), (2,4) in H and
    # W, so nine tiles of the untiled call's size, blended across their overlaps.
    tiles = TilingConfig(spatial_tile=64, temporal_tile=32, overlap=0.25)
    with torch.no_grad():
        eager, eager_tiled = ae.decode(z), ae.decode(wide, tiling=tiles)
        x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
        eager_latent = ae.encode(x)
        assert compile_autoencoder(ae, coders=("decoder",)) is ae
        assert_rel_l2(ae.decode(z), eager, COMPILED_RTOL)
        graphs, seconds = compile_stats(ae)
        assert graphs == 1 and seconds > 0
        assert_rel_l2(ae.decode(wide, tiling=tiles), eager_tiled, COMPILED_RTOL)
        # Tiles of the first call's size reuse its graph; the encoder stayed eager.
        assert compile_stats(ae) == (graphs, seconds)
        torch.testing.assert_close(ae.encode(x), eager_latent, rtol=0, atol=0)


def test_compile_ae_generates_the_eager_video_and_reports_its_compile_apart(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile-ae"])):
        out = tmp_path / name
        args = ["a red circle moving right", "--recipe", str(recipe), "--out", str(out)]
        result = generate(*args, "--format", "png", "--json", *extra)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.stdout)["timings_s"], frames(out)
    (eager_timings, eager), (timings, compiled) = runs["eager"], runs["compiled"]
    assert "compile_ae" not in eager_timings and timings["compile_ae"] > 0
    # The decode time no longer holds the compile (the tiny decode takes well under a second).
    assert timings["decode"] < timings["compile_ae"]
    assert compiled.shape == eager.shape == (8, 64, 64, 3)
    # uint8 frames of pixels within ~1e-6 of each other: at most one level apart (rounding).
    diff = np.abs(compiled.astype(int) - eager.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_flag_sets_the_recipe_key():
    result = generate("p", "--compile-ae", "--print-recipe")
    assert result.exit_code == 0, result.output
    assert "compile_ae = true" in result.stdout
    result = generate("p", "--print-recipe")
    assert "compile_ae = false" in result.stdout


@pytest.mark.parametrize(
    ("preset", "family"),
    [
        ("hunyuan-video-vae-tiny", "hunyuan-video-vae"),
        ("flux-ae-tiny", "flux-ae"),
        ("reducio-tiny", "reducio-vae"),
    ],
)
def test_other_autoencoders_are_refused_before_their_weights_load(
    tmp_path, tiny_weights, preset, family
):
    # The weights do not exist: the refusal comes before anything reads them.
    ae = f'preset = "{preset}"\npath = "{tmp_path / "missing"}"'
    recipe = recipe_file(tmp_path, tiny_weights, ae=ae)
    result = generate("p", "--recipe", str(recipe), "--compile-ae", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert f"--compile-ae: [ae] {preset} is a {family} autoencoder" in errors[0]
    assert "only the DC-AE family" in errors[0]


def test_a_loaded_autoencoder_of_another_family_is_refused():
    reducio = build_autoencoder("reducio-tiny")
    with pytest.raises(UsageError, match="the Reducio-VAE does not compile; only the DC-AE"):
        compile_autoencoder(reducio)


def test_an_autoencoder_that_leaves_the_device_is_refused():
    cuda = torch.device("cuda:0")  # only compared, never used
    check_compile_ae("dc-ae-tiny", Placement(cuda))  # resident: compiles
    check_compile_ae("dc-ae-tiny", Placement(torch.device("cpu"), park=True))  # nothing moves
    # `blocks` streams the DiT's blocks and, as `model`, sends every model (the AE too) home to
    # the host between phases: it moves the AE as well.
    assert Placement(cuda, offload="blocks").home("ae") == torch.device("cpu")
    for placement, named, drop in (
        (Placement(cuda, park=True), "--compile-ae and --offload cannot", "drop --offload"),
        (Placement(cuda, offload="model"), "and offload model cannot", "drop --compile-ae"),
        (Placement(cuda, offload="blocks"), "and offload blocks cannot", "drop --compile-ae"),
    ):
        with pytest.raises(UsageError, match=named) as err:
            check_compile_ae("dc-ae-tiny", placement)
        assert "folds the AE's weights" in str(err.value)
        assert str(err.value).endswith(drop)


def test_the_plan_keeps_every_model_resident_with_compile_ae():
    cuda = torch.device("cuda")  # planned on meta, never used
    plain = load_recipe(OPENSORA)
    compiled = load_recipe(OPENSORA, ["sample.compile_ae=true"])
    # 80 GB: without compile_ae the plan moves one model at a time and decodes in big tiles;
    # with it, everything stays resident and the decode tiles shrink to fit beside the models.
    free = plan_generate(plain, cuda, torch.bfloat16, 80)
    kept = plan_generate(compiled, cuda, torch.bfloat16, 80)
    assert free.fits and free.offload == "model"
    assert kept.fits and kept.offload == "none" and kept.peak_gb <= 80
    assert kept.decode_work > free.decode_work
    resident = sum(c.weight_gb for c in kept.components)
    assert kept.phases_gb["decode"] == pytest.approx(resident + kept.decode_gb)
    # 24 GB: the plain plan streams blocks; resident, the 11B DiT, its text encoders and the
    # t2i image models need about 68 GB, so the plan does not fit and says why.
    assert plan_generate(plain, cuda, torch.bfloat16, 24).offload == "blocks"
    tight = plan_generate(compiled, cuda, torch.bfloat16, 24)
    needs = tight.smallest_device_gb
    assert not tight.fits and tight.offload == "none" and 60 < needs < 80
    assert tight.notes[0] == (
        "[sample] compile_ae (the decoder's weights frozen into its compiled graph) keeps every "
        f"model resident and does not fit in 24 GB (needs {needs:.1f} GB); drop --compile-ae to "
        "let the plan offload"
    )
    # The smallest device is the boundary: it fits there (all resident) and not just under it.
    at = plan_generate(compiled, cuda, torch.bfloat16, needs + 1e-6)
    assert at.fits and at.offload == "none"
    assert not plan_generate(compiled, cuda, torch.bfloat16, needs - 1e-3).fits
    both = load_recipe(OPENSORA, ["sample.compile_ae=true", "sample.quantize='int8-wo'"])
    note = plan_generate(both, cuda, torch.bfloat16, 24).notes[0]
    assert note.startswith("[sample] quantize = 'int8-wo' and [sample] compile_ae (")
    assert "keep every model resident" in note
    assert note.endswith("set quantize to 'none' and drop --compile-ae to let the plan offload")


def test_generate_plan_with_compile_ae_on_the_command_line():
    base = ["--recipe", OPENSORA, "--plan", "--device", "cuda", "--compile-ae", "--json"]
    roomy = generate("p", *base, "--gpu-memory", "80")
    assert roomy.exit_code == 0, roomy.output
    plan = json.loads(roomy.stdout)
    assert plan["fits"] and plan["offload"] == "none"
    tight = generate("p", *base, "--gpu-memory", "24")
    assert tight.exit_code == 0, tight.output
    plan = json.loads(tight.stdout)
    assert not plan["fits"] and plan["notes"][0].startswith("[sample] compile_ae (")
