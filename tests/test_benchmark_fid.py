"""`vidcli benchmark --fid`: statistics and the Fréchet distance against closed forms, the harness
on a small network with given weights, the FID Inception's layout, and the command line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_class_generate import release  # noqa: F401  (the tiny class-conditional model)
from typer.testing import CliRunner

from vidcli.benchmark.fid import (
    FIDOptions,
    Statistics,
    frechet_distance,
    load_statistics,
    run,
    save_statistics,
    statistics,
)
from vidcli.benchmark.inception import FIDInception, inception_features, load_inception
from vidcli.cli import app
from vidcli.errors import CheckpointError, UsageError
from vidcli.media import write_image

runner = CliRunner()


def _stats(mu, sigma) -> Statistics:
    return Statistics(np.array(mu, dtype=float), np.array(sigma, dtype=float), 0)


def test_statistics_are_the_mean_and_unbiased_covariance():
    # features (1, 2), (3, 0), (5, 4): mean (3, 2); deviations (-2, 0), (0, -2), (2, 2);
    # covariance = sum of outer products / (N - 1) = [[8, 4], [4, 8]] / 2
    s = statistics(np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]]))
    assert s.mu.tolist() == [3.0, 2.0]
    assert s.sigma.tolist() == [[4.0, 2.0], [2.0, 4.0]]
    assert s.count == 3
    with pytest.raises(UsageError, match="at least 2 images"):
        statistics(np.ones((1, 4)))


def test_frechet_distance_of_diagonal_covariances():
    # diagonal: FID = |Δμ|² + Σ (√a − √b)² = (1 + 4) + ((1 − 2)² + (2 − 1)² + (3 − 0)²) = 16
    a = _stats([0, 0, 1], np.diag([1.0, 4.0, 9.0]))
    b = _stats([1, 2, 1], np.diag([4.0, 1.0, 0.0]))
    assert frechet_distance(a, b) == pytest.approx(16.0, abs=1e-12)
    assert frechet_distance(b, a) == pytest.approx(16.0, abs=1e-12)


def test_frechet_distance_of_non_commuting_covariances():
    # 2x2: tr √M = √(tr M + 2√det M) for M = Σ₁Σ₂ = [[2, 4], [1, 8]] (tr 10, det 12), so
    # FID = tr Σ₁ + tr Σ₂ − 2√(10 + 2√12) = 4 + 5 − 2√(10 + 2√12)
    a = _stats([0, 0], [[2.0, 1.0], [1.0, 2.0]])
    b = _stats([0, 0], [[1.0, 0.0], [0.0, 4.0]])
    expected = 9 - 2 * math.sqrt(10 + 2 * math.sqrt(12))
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-12)
    assert frechet_distance(b, a) == pytest.approx(expected, abs=1e-12)


def test_rank_deficient_covariances_give_zero_against_themselves():
    # 6 samples of 64-d features: rank 5, where a general sqrtm returns complex round-off
    features = np.random.default_rng(0).normal(size=(6, 64)) * 10
    s = statistics(features)
    assert abs(frechet_distance(s, s)) < 1e-9 * np.trace(s.sigma)
    with pytest.raises(UsageError, match="64-d and 2-d features"):
        frechet_distance(s, _stats([0, 0], np.eye(2)))


def _colour_folder(folder: Path, colours: list[tuple[int, int, int]]) -> Path:
    folder.mkdir()
    for i, colour in enumerate(colours):
        write_image(folder / f"{i}.png", np.full((8, 12, 3), colour, dtype=np.uint8))
    return folder


def _mean_colour_network(weight: list[list[float]]):
    """A small network with given weights: mean colour in [0, 1] -> Linear(3, 2, no bias)."""
    linear = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight))

    @torch.no_grad()
    def extract(images: np.ndarray) -> np.ndarray:
        mean = torch.from_numpy(images).double().mean(dim=(1, 2)) / 255
        return linear.double()(mean).numpy()

    return extract


def test_harness_on_a_small_network(tmp_path: Path):
    # features (2R, G): reference (0, 0), (2, 0), (0, 1); generated (2, 1), (0, 1), (2, 0).
    # Both covariances are [[4/3, -1/3], [-1/3, 1/3]], so FID = |Δμ|² = (2/3)² + (1/3)² = 5/9.
    reference = _colour_folder(tmp_path / "ref", [(0, 0, 9), (255, 0, 0), (0, 255, 0)])
    generated = _colour_folder(tmp_path / "gen", [(255, 255, 0), (0, 255, 7), (255, 0, 0)])
    extract = _mean_colour_network([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    stats = tmp_path / "ref.npz"
    options = FIDOptions(reference=reference, images=generated, save_stats=stats, batch_size=2)
    result = run(options, extract)
    assert result.fid == pytest.approx(5 / 9, abs=1e-12)
    assert (result.reference_count, result.generated_count, result.feature_dim) == (3, 3, 2)
    saved = load_statistics(stats)
    assert saved.count == 3
    assert np.allclose(saved.sigma, [[4 / 3, -1 / 3], [-1 / 3, 1 / 3]], atol=1e-12)
    again = run(FIDOptions(reference=stats, images=generated), extract)
    assert again.fid == pytest.approx(5 / 9, abs=1e-12)


def test_fid_of_recipe_samples_against_the_same_images_written_by_generate(release, tmp_path):  # noqa: F811
    _, recipe = release
    out = tmp_path / "written"
    args = ["generate", "--class", "0", "--class", "1", "--class", "2"]
    assert runner.invoke(app, [*args, "--recipe", str(recipe), "--out", str(out)]).exit_code == 0
    (out / "grid.png").unlink()
    extract = _mean_colour_network([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    options = FIDOptions(reference=out, recipe=recipe, samples=3)
    result = run(options, extract)
    assert result.generated_count == 3 and abs(result.fid) < 1e-9


def test_inception_layout_and_parameters(tmp_path: Path):
    model = FIDInception()
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (98,560 + 2,459,136
    # + 769,000) and with 1008 instead of 1000 logits (+ 8 · 2049): 23,850,960
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    sd = model.state_dict()
    assert tuple(sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].shape) == (384, 384, 3, 1)
    assert tuple(sd["Mixed_6e.branch7x7dbl_5.conv.weight"].shape) == (192, 192, 1, 7)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)
    with pytest.raises(UsageError, match=r"needs a \.safetensors file"):
        load_inception(None)
    bad = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.zeros(1008, 2048)}, bad)
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        load_inception(bad)


@pytest.mark.slow
def test_cli_fid_with_inception_weights(tmp_path: Path):
    # Inception at 299² costs seconds per image on a shared CPU: 2 + 2 images, the reference
    # as statistics, so the command line extracts only the generated pair once
    torch.manual_seed(0)
    weights = tmp_path / "inception.safetensors"
    state = {k: v for k, v in FIDInception().state_dict().items() if "num_batches" not in k}
    save_file(state, weights)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    generated = tmp_path / "generated"
    for i in range(2):
        write_image(generated / f"{i}.png", pixels[i])
    extract = inception_features(load_inception(weights))
    reference = save_statistics(tmp_path / "ref.npz", statistics(extract(pixels[2:])))
    expected = frechet_distance(statistics(extract(pixels[:2])), load_statistics(reference))
    args = ["benchmark", "--fid", "--reference", str(reference), "--images", str(generated)]
    result = runner.invoke(app, [*args, "--inception", str(weights), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["fid"] == pytest.approx(expected, rel=1e-6) and payload["fid"] > 0
    assert payload["feature_dim"] == 2048 and payload["generated_count"] == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--inception needs a .safetensors file of pytorch-fid's FID Inception"),
        (["--samples", "4"], "--samples counts images generated from --recipe"),
        (["--compare-ae"], "--fid runs alone"),
    ],
)
def test_cli_fid_refusals(tmp_path: Path, extra, message):
    a = _colour_folder(tmp_path / "a", [(0, 0, 0), (9, 9, 9)])
    b = _colour_folder(tmp_path / "b", [(1, 0, 0), (9, 0, 9)])
    args = ["benchmark", "--fid", "--reference", str(a), "--images", str(b), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_fid_checks_its_inputs(tmp_path: Path):
    a = _colour_folder(tmp_path / "a", [(0, 0, 0), (9, 9, 9)])
    one = _colour_folder(tmp_path / "one", [(0, 0, 0)])
    with pytest.raises(UsageError, match="needs --reference"):
        run(FIDOptions(images=a))
    with pytest.raises(UsageError, match="one of --images FOLDER or --recipe"):
        run(FIDOptions(reference=a))
    with pytest.raises(UsageError, match="1 images"):
        run(FIDOptions(reference=a, images=one))
    bad = tmp_path / "bad.npz"
    shutil.copy(a / "0.png", bad)
    with pytest.raises(UsageError, match=r"not an \.npz with mu and sigma"):
        run(FIDOptions(reference=bad, images=a), _mean_colour_network([[1, 0, 0], [0, 1, 0]]))
    stats = save_statistics(tmp_path / "s.npz", _stats([0, 0, 0], np.eye(3)))
    with pytest.raises(UsageError, match="2-d and 3-d features"):
        run(FIDOptions(reference=stats, images=a), _mean_colour_network([[1, 0, 0], [0, 1, 0]]))
