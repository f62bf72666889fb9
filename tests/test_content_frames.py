"""Autoencoders that decode from a content frame (Reducio): every stage passes the clip's frame
through `vidcli.models.content`, or refuses in one line where it has none."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tiny_models import micro_reducio

from vidcli.data import provenance
from vidcli.data.datasets import LatentDataset
from vidcli.data.latents import encode_latents
from vidcli.data.prepare import PrepareOptions, prepare
from vidcli.errors import UsageError
from vidcli.models import build_autoencoder
from vidcli.models import content as cf
from vidcli.models.mmdit import build_dit
from vidcli.placement import Placement
from vidcli.recipe import SampleSection
from vidcli.sampling import phases
from vidcli.sampling.pipeline import Pipeline


def clips(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.rand(batch, 3, 4, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


class Text(torch.nn.Module):
    """Prompt-independent embeddings: 3 tokens of width 8, pooled width 8."""

    token_dim = pooled_dim = 8

    def encode(self, prompts):
        n = len(prompts)
        return SimpleNamespace(
            tokens=torch.ones(n, 3, 8),
            mask=torch.ones(n, 3, dtype=torch.bool),
            pooled=torch.ones(n, 8),
        )


def test_only_a_conditioned_autoencoder_needs_content():
    assert cf.needs_content(micro_reducio())
    assert not cf.needs_content(build_autoencoder("dc-ae-tiny", device="meta"))
    cf.refuse_conditioned(build_autoencoder("dc-ae-tiny", device="meta"), "x", "y")  # no error
    with pytest.raises(UsageError, match=r"^x cannot give the Reducio-VAE's decode its content"):
        cf.refuse_conditioned(micro_reducio(), "x", "y")


@torch.no_grad()
def test_reconstruct_decodes_with_the_clips_own_centre_frame():
    ae, x = micro_reducio(), clips()
    z = ae.encode(x)
    expected = ae.decode(z, content=x[:, :, ae.content_index])
    assert torch.equal(cf.reconstruct(ae, x), expected)
    other = ae.decode(z, content=x[:, :, 0])
    assert not torch.allclose(expected, other)  # the content frame matters
    with pytest.raises(UsageError, match="decodes from a content frame, and none was given"):
        cf.decode(ae, z)


@torch.no_grad()
def test_dit_latents_are_reference_samples_and_content_latents_are_still_clips():
    ae, x = micro_reducio(), clips()
    a = cf.encode_for_dit(ae, x, torch.Generator().manual_seed(3))
    b = cf.encode_for_dit(ae, x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, ae.encode(x))  # a sample, not the mean
    assert torch.equal(a, ae.encode(x, sample=True, generator=torch.Generator().manual_seed(3)))
    frame = x[:, :, ae.content_index]
    still = frame[:, :, None].expand(-1, -1, 4, -1, -1)
    assert torch.equal(cf.content_latent(ae, frame), ae.encode(still))
    assert cf.content_latent(ae, frame).shape == (2, *ae.latent_shape(4, 16, 16))


def test_provenance_records_the_content_frame_convention_and_tells_it_apart():
    ae = micro_reducio()
    recorded = provenance.autoencoder_provenance("reducio-tiny", False, ae)
    assert recorded["content_frame"]["index"] == 1 and recorded["content_frame"]["frames"] == 4
    plain = provenance.autoencoder_provenance("reducio-tiny", False, ae)
    del plain["content_frame"]
    assert provenance.autoencoder_mismatch(recorded, plain).startswith("content_frame ")
    dcae = build_autoencoder("dc-ae-tiny", device="meta")
    assert "content_frame" not in provenance.autoencoder_provenance("dc-ae-tiny", False, dcae)


@pytest.fixture
def manifest(tmp_path):
    from vidcli.data.synthetic import make_shapes_dataset

    listing = make_shapes_dataset(tmp_path / "shapes", n=3, size=32, frames=4, fps=8)
    return prepare(PrepareOptions([str(listing)], tmp_path / "m", workers=1), progress=False)


def test_prepare_data_encode_stores_content_latents_beside_reference_latents(manifest, tmp_path):
    ae = micro_reducio()
    ae_part = provenance.autoencoder_provenance("reducio-tiny", False, ae)
    encode_latents(
        manifest.manifest,
        tmp_path / "latents",
        ae,
        Text(),
        num_frames=4,
        height=16,
        width=16,
        batch_size=2,
        progress=False,
        provenance={"ae": ae_part},
    )
    data = LatentDataset(tmp_path / "latents")
    assert data.provenance["ae"]["content_frame"] == ae_part["content_frame"]
    from vidcli.data.datasets import VideoDataset

    videos = VideoDataset(manifest.manifest, num_frames=4, height=16, width=16)
    with torch.no_grad():
        x = torch.stack([videos[i]["video"] for i in range(2)])
        latent = ae.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
        condition = cf.content_latent(ae, x[:, :, ae.content_index])
    for i in range(2):
        item = data[i]
        torch.testing.assert_close(item["latent"], latent[i])
        torch.testing.assert_close(item["content_latent"], condition[i])


def test_train_dit_conditions_every_latent_frame_on_the_content_latent():
    from vidcli.train.dit import _content_condition

    batch = {"latent": torch.zeros(2, 4, 2, 8, 8)}
    condition = torch.randn(2, 4, 2, 8, 8)
    _content_condition(batch, condition)
    assert torch.equal(batch["cond_latent"], condition)
    assert batch["cond_mask"].shape == (2, 1, 2, 8, 8) and bool((batch["cond_mask"] == 1).all())


def _pipeline(ae) -> Pipeline:
    torch.manual_seed(0)
    dit = build_dit(
        "mmdit-tiny", in_channels=4, context_in_dim=8, vec_in_dim=8, cond_embed=True, patch_size=1
    ).eval()
    return Pipeline(ae=ae, text=Text(), dit=dit, placement=Placement(torch.device("cpu")))


def test_generate_refuses_text_to_video_alone_on_a_conditioned_ae():
    pipe = _pipeline(micro_reducio())
    sample = SampleSection(steps=1, frames=4, height=16, width=16)
    with pytest.raises(UsageError, match=r"pass --image or enable \[t2i\]$"):
        phases.sample_videos(pipe, sample, ["a"], [0], (4, 16, 16))


@torch.no_grad()
def test_generate_decodes_with_the_content_frame_and_conditions_the_dit_on_it(monkeypatch):
    ae = micro_reducio()
    pipe = _pipeline(ae)
    sample = SampleSection(steps=2, frames=4, height=16, width=16)
    image = clips(1)[:, :, 0]
    content = cf.ContentFrames(image, [cf.content_latent(ae, image)[0]])
    seen = {}

    def record(pipe_, latents, frames, frames_content=None):
        seen["content"] = frames_content
        return torch.zeros(latents.shape[0], 3, frames, 16, 16)

    real_forward = pipe.dit.forward_video

    def forward(*args, **kwargs):
        seen.setdefault("cond", args[4] if len(args) > 4 else kwargs.get("cond_latent"))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(pipe.dit, "forward_video", forward)
    video = phases.sample_videos(pipe, sample, ["a", "b"], [0, 1], (4, 16, 16), content)
    assert video.shape == (2, 3, 4, 16, 16)
    # The prompt rows see the content latent on every frame; the no-image CFG row sees zeros.
    rows = seen["cond"]
    assert torch.equal(rows[0], content.latents[0]) and torch.equal(rows[1], content.latents[0])
    assert not rows[-1].any()
    monkeypatch.setattr(phases, "decode_videos", record)
    phases.sample_videos(pipe, sample, ["a", "b"], [0, 1], (4, 16, 16), content)
    assert torch.equal(seen["content"], image.expand(2, -1, -1, -1))


def test_compare_ae_has_a_reducio_row_with_its_tokens():
    from vidcli.benchmark.compare_ae import parse_ae_spec, probe_shape, row_tokens

    spec = parse_ae_spec("reducio-ft4:1")
    s = SimpleNamespace(frames=16, height=1024, width=1024)
    latent, tokens = row_tokens(spec, s)
    assert latent == (16, 4, 32, 32) and tokens == 4 * 32 * 32
    assert probe_shape(build_autoencoder("reducio-ft4", device="meta")) == (16, 64, 64)


def test_compare_ae_times_the_content_encode_of_a_reducio_row_apart(monkeypatch):
    import json

    from typer.testing import CliRunner

    from vidcli.cli import app

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the rows' worker processes share two cores
    args = ["benchmark", "--compare-ae", "--ae", "dc-ae-tiny:1", "--ae", "reducio-tiny:1"]
    args += ["--dit", "mmdit-tiny", "--resolution", "64", "--frames", "16", "--repeat", "1"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    plain, reducio = json.loads(result.stdout)["rows"]
    assert plain["content_s"] is None and "content_s" not in plain["extrapolated"]
    assert 0 < reducio["content_s"] < reducio["decode_s"]  # the decode includes it
    assert "content_s" in reducio["extrapolated"]  # scaled from the 16x64x64 probe
    assert "(content " in result.stderr


def test_memory_plan_decodes_reducio_at_1024_with_its_reference_tiles():
    from vidcli.models.dcae import TilingConfig
    from vidcli.plans import generate as gp
    from vidcli.plans.meta import measure_peak
    from vidcli.plans.sizes import ACTIVATION_MARGIN, GB

    ae = build_autoencoder("reducio-ft4", device="meta").eval().to(torch.bfloat16)
    sample = SampleSection(frames=16, height=1024, width=1024)
    options = gp.decode_options(ae, sample, torch.bfloat16)
    assert options[0][0] is None and options[0][2] == 1.0
    tiles = {o[0]["spatial_tile"]: o for o in options[1:]}
    assert 64 not in tiles  # no latent row to blend between 64 px tiles
    assert set(tiles) == {128, 192, 256, 384, 512, 768}
    assert all(o[0]["temporal_tile"] == 16 for o in options[1:])  # Reducio never tiles time
    # The 256 px estimate against measuring the whole tiled decode (fused SDPA, meta).
    z = torch.empty(1, 16, 4, 32, 32, device="meta", dtype=torch.bfloat16)
    image = torch.empty(1, 3, 1024, 1024, device="meta", dtype=torch.bfloat16)
    tiling = TilingConfig(spatial_tile=256, temporal_tile=16, overlap=0.25)
    whole = measure_peak(lambda: ae.decode(z, content=image, tiling=tiling)) * ACTIVATION_MARGIN
    copy = 3 * 16 * 1024 * 1024 * 4
    assert tiles[256][1][0] == pytest.approx((whole + copy) / GB, rel=0.05)
    assert options[0][1][0] > 4 * tiles[256][1][0]  # untiled holds far more


def test_quality_benchmark_reconstructs_with_each_clips_content_frame(manifest, tmp_path):
    import math

    from vidcli import benchmark as bench
    from vidcli.data.datasets import VideoDataset
    from vidcli.models.reducio import save_reducio

    ae = micro_reducio()
    folder = save_reducio(ae, tmp_path / "vae")
    options = bench.BenchmarkOptions(
        ae=["reducio-tiny:1"], resolution=32, frames=4, quality=tmp_path / "m", quality_clips=1
    )
    options.ae_weights = [f"reducio-tiny={folder}"]
    options.kernels = True  # quality runs beside any benchmark; kernels is the quick one
    (row,) = bench.run(options).quality
    # --resolution 32 measures 32x64 clips (the widescreen default, aligned to the preset's 32).
    clip = VideoDataset(tmp_path / "m" / "videos.parquet", num_frames=4, height=32, width=64)
    x = clip[0]["video"].unsqueeze(0)
    with torch.no_grad():
        rec = ae.decode(ae.encode(x), content=x[:, :, ae.content_index])
    a, b = (x + 1) / 2, ((rec + 1) / 2).clamp(0, 1)
    assert row["psnr"] == pytest.approx(10 * math.log10(1 / torch.mean((a - b) ** 2).item()))


def test_t2i_first_frames_become_a_conditioned_aes_content_frames(monkeypatch):
    from vidcli.sampling import t2i2v

    ae = micro_reducio()
    pipe = _pipeline(ae)
    pipe.t2i = SimpleNamespace(dit=torch.nn.Linear(1, 1), ae=torch.nn.Linear(1, 1))
    images = clips(2)[:, :, 0]
    refs = [t2i2v.condition_latent(ae, image, 4) for image in images]
    assert refs[0].shape == ae.latent_shape(4, 16, 16)  # every latent frame, not frame 0 only
    monkeypatch.setattr(t2i2v, "first_frame_conditions", lambda *a, **k: (images, refs))
    sample = SampleSection(steps=1, frames=4, height=16, width=16)
    content = phases.first_frames(pipe, sample, ["a", "b"], [0, 1], (4, 16, 16))
    assert isinstance(content, cf.ContentFrames)
    assert torch.equal(content.images, images) and content.latents == refs


def test_memory_plan_counts_the_content_frames_guidance_row():
    from vidcli.plans import generate as gp
    from vidcli.recipe import load_recipe

    values = ['ae.preset="reducio-ft4"', 'ae.path=""', "sample.height=1024", "sample.width=1024"]
    path = str(Path(__file__).parents[1] / "recipes" / "reducio-dit.toml")
    recipe = load_recipe(path, values)
    assert recipe.sample.guidance_img == 1.0
    plan = gp.plan_generate(recipe, torch.device("cuda"), torch.bfloat16, 24.0)
    assert plan.latent_shape == [16, 4, 32, 32] and plan.image_tokens == 4096
    assert plan.cfg_rows == 2  # image scale 1: the row without the content latent is not run
    assert plan.fits and plan.tiling["spatial_tile"] < 1024  # 24 GB: the decode must tile
    guided = gp.plan_generate(
        load_recipe(path, [*values, "sample.guidance_img=3.0"]),
        torch.device("cuda"),
        torch.bfloat16,
        24.0,
    )
    assert guided.cfg_rows == 3  # prompt, negative, and negative without the content latent
