"""The compatibility table, run: every pair of sampling options it allows samples finite latents
close to the plain run, and every pair it refuses exits 2 with one line.

Pairs are generated from `compatibility.OPTIONS`: each non-default value alone and each two
non-default values of two options (the others at their defaults), in fp32 and bf16 on the CPU,
plus the refused pairs under the values that make them work (`Refusal.unless`). Paths: t2v and
i2v on the bundled demo model, t2i2v and the guidance-distilled flux-dev t2i path on tiny
stand-ins in the released layout (test_released_pipeline's `released` folder). Sparse attention
is forced onto its sparse path (the dispatcher would stay dense at these sizes), so its residual
is exercised. A compiled DiT (`compile`) is compiled with dynamo's "eager" backend here: the
matrix checks what dynamo captures and where `vidcli.compile` falls back; inductor's numbers are
checked against eager in tests/test_compile.py. The whole matrix takes far more than two minutes
on 2 cores: the settings of the known breakages run by default, the rest is marked slow.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import itertools
import math
from pathlib import Path

import pytest
import torch
from test_released_pipeline import REPO, TINY, TINY_T2I, released, toml_table  # noqa: F401
from typer.testing import CliRunner

from vidcli.benchmark.caching import calibrate
from vidcli.cli import app
from vidcli.compile import DEFAULT_MODE, compile_dit
from vidcli.generate import _valid_size, load_generate_recipe
from vidcli.models.adapters import LoRAWeights, apply_lora_options, save_lora
from vidcli.placement import Placement
from vidcli.quantize import quantize_linears
from vidcli.recipe import load_recipe
from vidcli.sampling import acceleration
from vidcli.sampling.cache import cache_for_sample, calibration
from vidcli.sampling.compatibility import OPTIONS, REFUSED, Setting, check, refusals
from vidcli.sampling.phases import encode_text, first_frames, sample_latents
from vidcli.sampling.pipeline import Pipeline, load_pipeline
from vidcli.sampling.t2i2v import condition_latent

STEPS = 6
PROMPTS = ["a red circle moving right"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PSNR_FLOOR_DB = 12.0
"""Every allowed setting's latents are within this PSNR (peak: the plain latents' range) of the
plain run of the same path and dtype. Measured on 2 CPU cores: lowest 16.5 dB (uniform:3 with
LPL), uniform:3 alone 21 dB, the known breakages 27-inf dB once fixed; a NaN fails the finite
check first, a stale branch or a mis-indexed table fails the focused tests (below and in
test_cache_streams.py)."""
CALIBRATED = ("teacache", "smoothcache", "ditfastattn", "magcache")
TESTED = {
    **OPTIONS,
    "dtype": tuple(DTYPES),
    "quantize": ("none", "int8-wo") if importlib.util.find_spec("torchao") else ("none",),
}
"""fp16 is a CUDA compute dtype; the CPU matrix runs fp32 and bf16. fp8 needs CUDA at SM 8.9+;
int8-wo runs where torchao is installed (the `quant` extra, in `dev`)."""


def allowed_settings() -> list[Setting]:
    """Each non-default value alone, each allowed pair, and each refused pair made to work."""
    settings = [Setting(**{a: x}) for a, values in TESTED.items() for x in values[1:]]
    for (a, va), (b, vb) in itertools.combinations(TESTED.items(), 2):
        settings += [Setting(**{a: x, b: y}) for x, y in itertools.product(va[1:], vb[1:])]
    for rule in REFUSED:
        for key, values in rule.unless.items():
            for x, y, z in itertools.product(rule.first_values, rule.second_values, values):
                settings.append(Setting(**{rule.first: x, rule.second: y, key: z}))
    return [s for s in settings if not refusals(s)]


KNOWN_BREAKAGES = (
    Setting(solver="rf2", cache="taylorseer"),
    Setting(solver="rf2", cache="taylorseer-lite"),
    Setting(solver="rf2", cache="adacache"),
    Setting(cache="taylorseer"),
    Setting(cache="taylorseer", dtype="bf16"),
    Setting(cache="teacache", offload="blocks"),
    Setting(sparse_attention="window", sparse_residual="off", cache="smoothcache"),
    Setting(sparse_attention="window", sparse_residual="off", cache="ditfastattn"),
    Setting(path="distilled", cache="adacache"),
    Setting(path="distilled", cache="fbcache"),
    Setting(path="distilled", solver="rf2"),
    Setting(path="distilled", lpl="on"),
    Setting(path="distilled", sparse_attention="window"),
    Setting(path="i2v", cache="taylorseer"),
    Setting(path="t2i2v", solver="rf2"),
)
"""Combinations that failed before the table (issue 27): NaN, ZeroDivisionError, device
mismatch, a stale CFG branch, options the distilled path ignored. They run by default."""


def matrix() -> list:
    return [
        pytest.param(s, id=label(s), marks=() if s in KNOWN_BREAKAGES else pytest.mark.slow)
        for s in allowed_settings()
    ]


def label(setting: Setting) -> str:
    default = Setting()
    changed = [
        f"{f.name}={getattr(setting, f.name)}"
        for f in dataclasses.fields(Setting)
        if getattr(setting, f.name) != getattr(default, f.name)
    ]
    return ",".join(changed)


class Stand:
    """One recipe's pipelines (per dtype), its embeddings, calibration and plain runs, built on
    first use."""

    def __init__(self, recipe, tmp: Path):
        self.recipe, self.tmp = recipe, tmp
        self.pipes: dict[str, Pipeline] = {}
        self.texts: dict[str, tuple] = {}
        self.frames: dict[str, list[torch.Tensor]] = {}
        self.calibrated = ""
        self.plain: dict[tuple[str, str], torch.Tensor] = {}

    def base(self, dtype: str) -> Pipeline:
        if dtype not in self.pipes:
            placement = Placement(torch.device("cpu"), DTYPES[dtype])
            self.pipes[dtype] = load_pipeline(self.recipe, placement, ema=False)
        return self.pipes[dtype]

    def pipe(self, setting: Setting) -> Pipeline:
        base = self.base(setting.dtype)
        plain = (setting.offload, setting.lora, setting.quantize, setting.compile)
        if plain == ("none", "off", "none", "off"):
            return base
        # The run's own copy of the DiT, placed (and LoRA-merged, quantized, compiled) as
        # generate does.
        placement = Placement(torch.device("cpu"), base.dtype, setting.offload)
        dit = placement.place(copy.deepcopy(base.dit), "dit")
        if setting.lora == "on":
            apply_lora_options(dit, [str(self.lora(dit))])
        quantize_linears(dit, setting.quantize)
        compile_dit(dit, setting.compile, backend="eager")
        return dataclasses.replace(base, dit=dit, placement=placement)

    def lora(self, dit: torch.nn.Module) -> Path:
        path = self.tmp / f"lora-{id(self)}.safetensors"
        if not path.is_file():
            gen = torch.Generator().manual_seed(0)
            down, up, alpha = {}, {}, {}
            for name, module in dit.named_modules():
                if isinstance(module, torch.nn.Linear) and "blocks." in name:
                    down[name] = 0.1 * torch.randn(2, module.in_features, generator=gen)
                    up[name] = 0.1 * torch.randn(module.out_features, 2, generator=gen)
                    alpha[name] = 2.0
            save_lora(LoRAWeights(down, up, alpha), path)
        return path

    @property
    def size(self) -> tuple[int, int, int]:
        s = self.recipe.sample
        return _valid_size(self.base("fp32").ae, s.frames, s.height, s.width, False)

    def calibration(self) -> str:
        """One calibration per model, measured in fp32 (a model's file serves every dtype)."""
        if not self.calibrated:
            found = calibrate(self.base("fp32"), self.recipe.sample, self.size, STEPS)
            path = self.tmp / f"calibration-{id(self)}.json"
            calibration.save_calibration(found, path)
            self.calibrated = str(path)
        return self.calibrated

    def sample(self, setting: Setting, spec: str, steps: int):
        return dataclasses.replace(
            self.recipe.sample,
            steps=steps,
            solver=setting.solver,
            cache=spec,
            cache_calibration=self.calibration() if setting.cache in CALIBRATED else "",
            lpl=setting.lpl == "on",
            lpl_start=0.2,
            lpl_patience=1,
            tdtm_steps=2 if setting.tdtm == "on" else 0,
            sparse_attention=setting.sparse_attention,
            sparse_residual=setting.sparse_residual == "on",
            sparse_window=[1, 1, 1],
            sparse_tile=[1, 1, 1],
        )

    def reference(self, setting: Setting, pipe: Pipeline, sample):
        """The i2v condition of the path: a still image's latent, or t2i2v's drawn frame 0."""
        size = self.size
        if setting.path == "i2v":
            image = torch.linspace(-1, 1, 3 * size[1] * size[2]).reshape(3, size[1], size[2])
            with pipe.placement.on_device(ae=pipe.ae):
                return condition_latent(pipe.ae, image, size[0])
        if setting.path == "t2i2v":
            if setting.dtype not in self.frames:
                seeds = [sample.seed]
                self.frames[setting.dtype] = first_frames(pipe, sample, PROMPTS, seeds, size)
            return self.frames[setting.dtype]
        return None

    def run(
        self, setting: Setting, spec: str = "", steps: int = STEPS, runners: list | None = None
    ) -> torch.Tensor:
        """The latents (N, C, T', H', W') of `setting`, sampled as generate samples them.

        spec: the cache with its value (default: `setting.cache` at its default value);
        runners: receives the caching runner."""
        check(setting)
        pipe, sample = self.pipe(setting), self.sample(setting, spec or setting.cache, steps)
        if setting.dtype not in self.texts:
            with pipe.placement.autocast():
                self.texts[setting.dtype] = encode_text(pipe, PROMPTS, [sample.negative_prompt])
        emb, neg = self.texts[setting.dtype]
        latent_shape = pipe.ae.latent_shape(*self.size)
        reference = self.reference(setting, pipe, sample)
        cached = cache_for_sample(
            sample.cache, sample.cache_calibration, "", pipe.dit, steps, latent_shape[1]
        )
        if runners is not None:
            runners.append(cached)
        with pipe.placement.autocast():
            latents = sample_latents(
                pipe, sample, emb, neg, [sample.seed], latent_shape, reference,
                model_fn=cached, hooks=cached,
            )  # fmt: skip
        return latents.float()

    def plain_run(self, setting: Setting) -> torch.Tensor:
        key = (setting.path, setting.dtype)
        if key not in self.plain:
            self.plain[key] = self.run(Setting(path=setting.path, dtype=setting.dtype))
        return self.plain[key]


@pytest.fixture(scope="module")
def stands(released, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("compatibility")
    small = ["sample.frames=8", "sample.height=32", "sample.width=32", f"sample.steps={STEPS}"]
    demo = load_generate_recipe(None, None, small)
    tiny = [f"dit.overrides={toml_table(TINY)}", "sample.height=32", "sample.width=32"]
    t2i2v = load_recipe(
        REPO / "recipes" / "opensora-v2-256px.toml",
        ["ae.preset=hunyuan-video-vae-tiny", "sample.frames=5", *tiny, *TINY_T2I],
    )
    flux = load_recipe(
        REPO / "recipes" / "flux-dev-t2i.toml",
        ["ae.preset=flux-ae-tiny", "text.max_length=8", *tiny],
    )
    demo_stand = Stand(demo, tmp)
    return {
        "t2v": demo_stand,
        "i2v": demo_stand,
        "t2i2v": Stand(t2i2v, tmp),
        "distilled": Stand(flux, tmp),
    }


@pytest.fixture(autouse=True)
def forced_sparse(monkeypatch, released):  # noqa: F811
    """The sparse path at every size, as on a long video; the released recipes name their
    weights relative to the released folder."""
    monkeypatch.chdir(released)
    config = functools.partial(acceleration.VideoAttentionConfig, force_sparse=True)
    monkeypatch.setattr(acceleration, "VideoAttentionConfig", config)


def psnr_db(latents: torch.Tensor, plain: torch.Tensor) -> float:
    """PSNR of latents against the plain run's, the peak being the plain latents' range."""
    peak = (plain.max() - plain.min()).item()
    mse = (latents - plain).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


@pytest.mark.parametrize("setting", matrix())
def test_allowed_setting_samples_close_to_the_plain_run(stands, setting):
    stand = stands[setting.path]
    with torch.no_grad():
        latents = stand.run(setting)
        plain = stand.plain_run(setting)
    assert torch.isfinite(latents).all(), label(setting)
    assert psnr_db(latents, plain) >= PSNR_FLOOR_DB, (
        f"{label(setting)}: {psnr_db(latents, plain):.1f} dB"
    )


def refused_pairs() -> list[Setting]:
    """One setting per refused pair of values a CPU run of `vidcli generate` can ask for (the
    offload pairs: tests/test_quantize.py)."""
    settings = []
    for rule in REFUSED:
        if not {rule.first, rule.second} <= set(CLI_ARGS):
            continue
        for x, y in itertools.product(rule.first_values, rule.second_values):
            settings.append(Setting(**{rule.first: x, rule.second: y}))
    return settings


CLI_ARGS = {
    "solver": lambda v: ["--solver", v],
    "cache": lambda v: ["--cache", v],
    "tdtm": lambda v: ["--tdtm-steps", "2"],
    "sparse_attention": lambda v: ["--sparse-attention", v],
    "path": lambda v: [],
    "quantize": lambda v: ["--quantize", v],
    "lora": lambda v: ["--lora", "never-read.safetensors"],  # refused before any LoRA loads
    "compile": lambda v: ["--compile"] if v == DEFAULT_MODE else ["--set", f'sample.compile="{v}"'],
}


@pytest.mark.parametrize("setting", refused_pairs(), ids=label)
def test_refused_pair_exits_2_with_one_line(tmp_path, setting):
    (message,) = refusals(setting)
    recipe = (
        [] if setting.path == "t2v" else ["--recipe", str(REPO / "recipes" / "flux-dev-t2i.toml")]
    )
    args = [arg for f in dataclasses.fields(Setting) if f.name in CLI_ARGS
            for arg in CLI_ARGS[f.name](getattr(setting, f.name))
            if getattr(setting, f.name) != getattr(Setting(), f.name)]  # fmt: skip
    out = str(tmp_path / "x.png")
    result = CliRunner().invoke(app, ["generate", "a kite", *recipe, *args, "--out", out])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not Path(out).exists()


def test_adacache_on_one_latent_frame_follows_its_threshold(stands):
    # One frame has no motion: MoReg would scale every distance to 0 and reuse at the longest
    # codebook rate; without it a tiny threshold computes every step.
    runners = []
    setting = Setting(path="distilled", cache="adacache")
    with torch.no_grad():
        stands["distilled"].run(setting, spec="adacache:0.0000001", steps=30, runners=runners)
    assert runners[0].stats.full_evals == 30


def test_distilled_path_ends_each_run_for_its_cache(stands):
    # The distilled loop tells the cache each evaluation and the end of the run, so nothing the
    # first prompt cached is compared against the next one.
    runners = []
    with torch.no_grad():
        stands["distilled"].run(Setting(path="distilled", cache="fbcache"), runners=runners)
    policy = runners[0].policy
    assert policy.reference is None and policy.tail is None
    assert len(runners[0].stats.kinds) == STEPS


def test_calibration_with_rf2_indexes_the_steps(stands):
    stand = stands["t2v"]
    sample = dataclasses.replace(stand.recipe.sample, solver="rf2")
    with torch.no_grad():
        found = calibrate(stand.base("fp32"), sample, stand.size, STEPS)
    key = str(STEPS)
    # One TeaCache pair per step after the first (the midpoints record nothing), one
    # DiTFastAttn row per step, SmoothCache errors for every step.
    assert len(found.teacache_pairs[key]) == STEPS - 1
    assert len(found.ditfastattn[key]) == STEPS
    for curves in found.smoothcache[key].values():
        assert all(len(row) == STEPS for row in curves)
        assert all(e is None or math.isfinite(e) for e in curves[0][: STEPS - 1])


def test_table_options_are_the_setting_fields():
    assert list(OPTIONS) == [f.name for f in dataclasses.fields(Setting)]
    assert all(getattr(Setting(), name) == values[0] for name, values in OPTIONS.items())
