"""Latent shards record what made them; train-dit and generate refuse another AE's latents."""

import json

import pyarrow.parquet as pq
import pytest
import torch

from vidcli import generate
from vidcli.data import stage
from vidcli.data.datasets import LatentDataset
from vidcli.data.provenance import (
    PROVENANCE_KEY,
    autoencoder_provenance,
    weights_sha256,
    write_provenance,
)
from vidcli.data.synthetic import make_shapes_dataset
from vidcli.errors import UsageError
from vidcli.models import build_autoencoder, build_dit, load_autoencoder, save_autoencoder, save_dit
from vidcli.recipe import load_recipe
from vidcli.train.dit import _checked_provenance


def write_recipe(path, ae, manifest="", dit=""):
    path.write_text(
        f"""
[ae]
preset = "dc-ae-tiny"
path = "{ae}"
tiling = false
[dit]
path = "{dit}"
[text]
max_length = 8
[data]
manifest = "{manifest}"
num_frames = 8
height = 64
width = 64
[train]
batch_size = 2
"""
    )
    return load_recipe(path)


@pytest.fixture(scope="module")
def two_aes(tmp_path_factory):
    root = tmp_path_factory.mktemp("aes")
    torch.manual_seed(0)
    first = save_autoencoder(build_autoencoder("dc-ae-tiny"), root / "a")
    torch.manual_seed(1)
    second = save_autoencoder(build_autoencoder("dc-ae-tiny"), root / "b")
    return first, second


def test_shards_record_what_made_them_and_reencode_for_another_ae(tmp_path, two_aes):
    first, second = two_aes
    listing = make_shapes_dataset(tmp_path / "shapes", n=2, size=64, frames=8, fps=8)
    recipe_a = write_recipe(tmp_path / "a.toml", first)
    recipe_a = stage.prepare_for_encode(
        recipe_a, stage.PrepareOptions(sources=[str(listing)], out_dir=tmp_path / "data", workers=1)
    )
    out = tmp_path / "latents"
    assert stage.run_encode(recipe_a, out).shards_written == 1

    meta = pq.read_schema(out / "latents-00000.parquet").metadata[PROVENANCE_KEY]
    made = json.loads(meta)
    assert made["ae"] == {
        "preset": "dc-ae-tiny",
        "weights_sha256": weights_sha256(load_autoencoder(first)),
        "scaling_factor": load_autoencoder(first).scaling_factor,
        "shift_factor": None,
        "latent_channels": 8,
    }
    assert made["text"] == {
        "backend": "minilm",
        "paths": {"clip": "", "minilm": "", "t5": ""},
        "max_length": 8,
    }
    assert made["clip"]["num_frames"] == 8 and made["clip"]["height"] == 64
    assert LatentDataset(out).provenance == made
    assert weights_sha256(load_autoencoder(first)) != weights_sha256(load_autoencoder(second))

    # train-dit: the same AE passes, another one is refused in one line.
    assert _checked_provenance(recipe_a, made) == made
    recipe_b = stage.with_manifest(
        write_recipe(tmp_path / "b.toml", second), recipe_a.data.manifest
    )
    with pytest.raises(UsageError, match="made by another autoencoder than \\[ae\\]") as caught:
        _checked_provenance(recipe_b, made)
    assert "\n" not in str(caught.value) and "weights_sha256" in str(caught.value)

    # The encode fingerprint covers the AE: the same AE skips, another one re-encodes.
    assert stage.run_encode(recipe_a, out).shards_skipped == 1
    assert stage.run_encode(recipe_b, out).shards_written == 1
    assert LatentDataset(out).provenance["ae"]["weights_sha256"] == weights_sha256(
        load_autoencoder(second)
    )


def test_generate_refuses_a_dit_trained_on_another_aes_latents(tmp_path, two_aes):
    first, second = two_aes
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, context_in_dim=384, vec_in_dim=384)
    checkpoint = save_dit(dit, tmp_path / "step-1")
    recorded = {"ae": autoencoder_provenance("dc-ae-tiny", True, load_autoencoder(first))}
    write_provenance(checkpoint, recorded)
    ok = write_recipe(tmp_path / "ok.toml", first, dit=checkpoint)
    assert generate.load_pipeline(ok).dit is not None
    other = write_recipe(tmp_path / "other.toml", second, dit=checkpoint)
    with pytest.raises(UsageError, match=r"training latents of DiT .* another autoencoder"):
        generate.load_pipeline(other)


def test_train_dit_checkpoints_carry_the_provenance(tmp_path):
    from vidcli.data.provenance import read_provenance
    from vidcli.train.dit import _recording

    saved = []
    save = _recording(
        lambda state, folder, stem, written=None: saved.append(stem), {"ae": {"preset": "x"}}
    )
    save({}, tmp_path, "ema")
    assert read_provenance(tmp_path) is None
    save({}, tmp_path, "model")
    assert saved == ["ema", "model"] and read_provenance(tmp_path) == {"ae": {"preset": "x"}}
