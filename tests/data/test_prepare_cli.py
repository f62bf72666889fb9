"""`vidcli prepare-data` through the CLI: synthetic set, manifest + rejections, rerun, --encode."""

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.data.datasets import LatentDataset


def invoke(*args: str):
    return CliRunner().invoke(app, ["prepare-data", *args])


def test_synthetic_prepare_rerun_and_encode(tmp_path):
    clips = tmp_path / "shapes"
    done = invoke("--synthetic", "shapes:4", "--out", str(clips))
    assert done.exit_code == 0, done.output
    assert done.stdout.strip() == str(clips / "listing.jsonl")
    (clips / "clips" / "broken.mp4").write_bytes(b"\x00garbage" * 50)

    out = tmp_path / "data"
    first = invoke(str(clips / "clips"), "--out", str(out), "--workers", "1", "--json")
    assert first.exit_code == 0, first.output
    result = json.loads(first.stdout)
    assert (result["accepted"], result["rejected_count"]) == (4, 1)
    rejected = pq.read_table(out / "rejected.parquet").to_pylist()
    assert [r["path"].endswith("broken.mp4") for r in rejected] == [True]
    manifest = pq.read_table(out / "videos.parquet").to_pylist()
    assert {r["caption"].split()[-2] for r in manifest} == {"moving"}

    again = json.loads(invoke(str(clips / "clips"), "--out", str(out), "--json").stdout)
    assert again["skipped_unchanged"] == 5 and again["accepted"] == 4

    recipe = tmp_path / "encode.toml"
    recipe.write_text(
        f"""
[ae]
preset = "dc-ae-tiny"
tiling = false
[text]
max_length = 8
[data]
manifest = "{out}"
num_frames = 8
height = 64
width = 64
[train]
batch_size = 2
"""
    )
    latents = tmp_path / "latents"
    encoded = invoke("--encode", str(recipe), "--out", str(latents), "--json")
    assert encoded.exit_code == 0, encoded.output
    assert json.loads(encoded.stdout)["rows"] == 4
    dataset = LatentDataset(latents)
    item = dataset[0]
    assert len(dataset) == 4
    assert tuple(item["latent"].shape) == (8, 2, 2, 2)  # dc-ae-tiny: 8 ch, T/4, H/32, W/32
    assert tuple(item["text_tokens"].shape) == (8, 384)


def test_no_source_is_a_usage_error():
    done = invoke("--out", "x")
    assert done.exit_code == 2 and "needs at least one SOURCE" in done.stderr
