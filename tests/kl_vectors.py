"""Fixtures of the reference vectors of the diffusers-backed KL autoencoders (Flux, Hunyuan)."""

import json

import pytest
from safetensors.torch import load_file, save_file

from vidcli.models.autoencoders import load_autoencoder


def vector_fixtures(vectors_name: str, released_name: str, preset: str, model_name: str):
    """Module-scoped fixtures for `vectors/<vectors_name>`: `vectors` = (every tensor in fp32,
    the `model.` weights as stored with the prefix dropped, the JSON), `released_file` = those
    weights saved as `released_name` (the released file's key layout), and `<model_name>` = the
    autoencoder loaded from that file with `preset`. Assign the three to module names."""

    @pytest.fixture(scope="module", name="vectors")
    def vectors(vectors_dir):
        tensors = load_file(str(vectors_dir / f"{vectors_name}.safetensors"))
        meta = json.loads((vectors_dir / f"{vectors_name}.json").read_text())
        weights = {
            k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")
        }
        return {k: v.float() for k, v in tensors.items()}, weights, meta

    @pytest.fixture(scope="module", name="released_file")
    def released_file(vectors, tmp_path_factory):
        path = tmp_path_factory.mktemp(vectors_name) / released_name
        save_file(vectors[1], str(path))
        return path

    @pytest.fixture(scope="module", name=model_name)
    def model(released_file):
        return load_autoencoder(released_file, preset=preset)

    return vectors, released_file, model
