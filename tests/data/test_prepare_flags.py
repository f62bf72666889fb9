"""prepare-data flags once ignored: SOURCE with --encode; filters and reruns of --synthetic."""

import json

import pyarrow.parquet as pq
from typer.testing import CliRunner

from vidcli.cli import app
from vidcli.data.datasets import LatentDataset
from vidcli.data.synthetic import make_shapes_dataset


def invoke(*args: str):
    return CliRunner().invoke(app, ["prepare-data", *args])


ENCODE_RECIPE = """
[ae]
preset = "dc-ae-tiny"
tiling = false
[text]
max_length = 8
[data]
num_frames = 8
height = 64
width = 64
[train]
batch_size = 2
"""


def test_encode_reads_the_source_given_on_the_command_line(tmp_path):
    listing = make_shapes_dataset(tmp_path / "shapes", n=3, size=64, frames=8, fps=8)
    recipe = tmp_path / "encode.toml"
    recipe.write_text(ENCODE_RECIPE)  # no [data] source, manifest or latents: SOURCE is the data
    out = tmp_path / "data"
    done = invoke(str(listing), "--out", str(out), "--encode", str(recipe), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["rows"] == 3
    manifest = pq.read_table(out / "videos.parquet").to_pylist()
    captions = [json.loads(line)["caption"] for line in listing.read_text().splitlines()]
    assert [row["caption"] for row in manifest] == captions
    latents = LatentDataset(out)
    assert sorted(latents[i]["caption"] for i in range(len(latents))) == sorted(captions)


def test_encode_source_applies_the_filters(tmp_path):
    listing = make_shapes_dataset(tmp_path / "shapes", n=2, size=64, frames=8, fps=8)
    recipe = tmp_path / "encode.toml"
    recipe.write_text(ENCODE_RECIPE)
    out = tmp_path / "data"
    done = invoke(str(listing), "--out", str(out), "--encode", str(recipe), "--min-size", "65")
    assert done.exit_code == 2
    assert "no clip to encode" in done.output
    assert pq.read_table(out / "videos.parquet").num_rows == 0
    assert "min_size" in pq.read_table(out / "rejected.parquet").column("reason")[0].as_py()


def test_synthetic_refuses_filters_it_would_ignore(tmp_path):
    done = invoke("--synthetic", "shapes:2", "--out", str(tmp_path / "s"), "--min-frames", "32")
    assert done.exit_code == 2
    assert "--min-frames" in done.output and "do not apply" in done.output
    assert not (tmp_path / "s").exists()


def test_synthetic_keeps_an_existing_set_without_overwrite(tmp_path):
    out = tmp_path / "s"
    assert invoke("--synthetic", "shapes:2", "--out", str(out)).exit_code == 0
    clip = out / "clips" / "shapes-00000.mp4"
    before = clip.read_bytes()
    clip.write_bytes(b"mine")  # the user's edit must survive a second run
    again = invoke("--synthetic", "shapes:2", "--out", str(out))
    assert again.exit_code == 2
    assert "--overwrite" in again.output
    assert clip.read_bytes() == b"mine"
    replaced = invoke("--synthetic", "shapes:2", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert clip.read_bytes() == before
    assert not [p for p in out.rglob("*.tmp")]
