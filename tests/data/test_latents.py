"""Latent extraction: sharded Parquet, per-rank shards, resume, and the decode round trip."""

import zlib
from typing import NamedTuple

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from vidcli.data import latents as latents_module
from vidcli.data.datasets import LatentDataset, VideoDataset
from vidcli.data.latents import encode_latents, shard_path
from vidcli.data.prepare import PrepareOptions, prepare


class TextEmbeddings(NamedTuple):
    tokens: torch.Tensor  # (B, L, D)
    mask: torch.Tensor  # (B, L)
    pooled: torch.Tensor  # (B, Dp)


class StridedConvAE:
    """A fixed strided 3D convolution: 3 -> 4 channels, 2x8x8 compression; decode transposes it."""

    def __init__(self):
        self.weight = torch.randn(4, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) / 20

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, T, H, W) -> (B, 4, T/2, H/8, W/8)
        return F.conv3d(x, self.weight, stride=(2, 8, 8))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose3d(z, self.weight, stride=(2, 8, 8))


class HashTextEncoder:
    """Each word's embedding is seeded by its CRC32; 6 tokens of width 5, pooled = masked mean."""

    def encode(self, prompts: list[str]) -> TextEmbeddings:
        tokens, mask = (
            torch.zeros(len(prompts), 6, 5),
            torch.zeros(len(prompts), 6, dtype=torch.bool),
        )
        for b, prompt in enumerate(prompts):
            for position, word in enumerate(prompt.split()[:6]):
                seed = zlib.crc32(word.encode())
                tokens[b, position] = torch.randn(5, generator=torch.Generator().manual_seed(seed))
                mask[b, position] = True
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return TextEmbeddings(tokens, mask, pooled)


@pytest.fixture
def manifest(shapes_listing, tmp_path):
    return prepare(
        PrepareOptions([str(shapes_listing)], tmp_path / "m", workers=1), progress=False
    ).manifest


def test_stored_latents_decode_like_fresh_ones(manifest, tmp_path):
    ae, text = StridedConvAE(), HashTextEncoder()
    settings = dict(num_frames=4, height=32, width=48, batch_size=2, shard_size=4, progress=False)
    result = encode_latents(manifest, tmp_path / "lat", ae, text, **settings)
    assert (result.shards_written, result.rows, result.failed) == (2, 6, 0)
    latents = LatentDataset(tmp_path / "lat")
    videos = VideoDataset(manifest, num_frames=4, height=32, width=48)
    assert len(latents) == 6
    for item in latents:
        fresh = ae.encode(videos.load(item["index"])[None])[0]
        assert item["latent"].shape == (4, 2, 4, 6) and item["latent"].dtype == torch.float32
        torch.testing.assert_close(ae.decode(item["latent"][None]), ae.decode(fresh[None]))
        expected = text.encode([videos.captions[item["index"]]])
        assert item["caption"] == videos.captions[item["index"]]
        assert torch.equal(item["text_tokens"], expected.tokens[0])
        assert torch.equal(item["text_mask"], expected.mask[0])
        assert torch.equal(item["text_pooled"], expected.pooled[0])


def test_shards_are_written_in_row_groups_that_read_back_alike(manifest, tmp_path, monkeypatch):
    ae, text = StridedConvAE(), HashTextEncoder()
    settings = dict(num_frames=2, height=16, width=16, shard_size=4, progress=False)
    encode_latents(manifest, tmp_path / "one", ae, text, **settings)
    row = pq.read_table(shard_path(tmp_path / "one", 0)).slice(0, 1).nbytes
    monkeypatch.setattr(latents_module, "ROW_GROUP_BYTES", 2 * row)  # two rows a group
    encode_latents(manifest, tmp_path / "two", ae, text, **settings)
    groups = [pq.read_metadata(shard_path(tmp_path / d, 0)).num_row_groups for d in ("one", "two")]
    assert groups == [1, 2]
    one, two = LatentDataset(tmp_path / "one"), LatentDataset(tmp_path / "two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two, strict=True):
        assert a["index"] == b["index"] and torch.equal(a["latent"], b["latent"])
        assert torch.equal(a["text_tokens"], b["text_tokens"])


def test_ranks_resume_and_stale_shards(manifest, tmp_path):
    ae, text = StridedConvAE(), HashTextEncoder()
    out = tmp_path / "lat"
    settings = dict(num_frames=2, height=16, width=16, shard_size=2, world_size=2, progress=False)
    first = encode_latents(manifest, out, ae, text, rank=0, **settings)
    assert (first.shards_written, first.rows) == (2, 4)
    assert [p.name for p in sorted(out.glob("*.parquet"))] == [
        "latents-00000.parquet",
        "latents-00002.parquet",
    ]
    second = encode_latents(manifest, out, ae, text, rank=1, **settings)
    assert (second.shards_written, second.rows) == (1, 2)
    assert sorted(item["index"] for item in LatentDataset(out)) == list(range(6))

    shard_path(out, 2).unlink()
    resumed = encode_latents(manifest, out, ae, text, rank=0, **settings)
    assert (resumed.shards_skipped, resumed.shards_written) == (1, 1)
    # Other settings make every shard stale: they are encoded again, not reused.
    settings["height"] = 32
    redone = encode_latents(manifest, out, ae, text, rank=0, **settings)
    assert (redone.shards_skipped, redone.shards_written) == (0, 2)
