"""Which sampling options combine: the one table `vidcli generate` checks before loading models.

A run is described by one value per option (`Setting`): the `[sample]` solver, cache method, LPL,
token merging (TDTM), sparse attention and its residual; the offload mode and compute dtype of the
run's placement; the path (t2v, i2v from `--image`, t2i2v from `[t2i] enabled`, or a
guidance-distilled DiT such as flux-dev t2i); whether LoRAs are merged; and the DiT's
quantization (`[sample] quantize`; fp8 and a missing torchao are refused by `check_quantize`,
which depends on the device, the compute dtype and the install, not on a pair); and
`torch.compile` of the DiT (`[sample] compile`, `vidcli.compile`). `[sample] compile_ae` is
checked apart (`check_compile_ae`: the AE family and whether the AE stays on the device). Every
pair of values not in `REFUSED` works (tests/sampling/test_compatibility.py runs each allowed
pair); a refused pair is a `UsageError` (exit 2) naming both options and why.

How the options stay composable: caches keep their state per layer and per CFG branch, and a
solver with several evaluations per step gives each evaluation stream its own cache
(`CachedDiT`); the distilled path runs the same sampling hooks (solver, LPL, attention plan,
cache) as the CFG path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from vidcli.compile import COMPILE_MODES
from vidcli.errors import UsageError
from vidcli.placement import Placement
from vidcli.quantize import QUANTIZE_MODES, check_quantize
from vidcli.recipe import Recipe, SampleSection
from vidcli.sampling.cache import METHODS, parse_cache

SPARSE_KINDS = ("window", "sta", "frame_tile")


@dataclass(frozen=True)
class Setting:
    """One value per option; the defaults are the plain run."""

    solver: str = "euler"
    cache: str = "none"
    lpl: str = "off"
    tdtm: str = "off"
    sparse_attention: str = "off"
    sparse_residual: str = "on"
    offload: str = "none"
    dtype: str = "fp32"
    path: str = "t2v"
    lora: str = "off"
    quantize: str = "none"
    compile: str = "off"


OPTIONS: dict[str, tuple[str, ...]] = {
    "solver": ("euler", "rf2"),
    "cache": tuple(METHODS),
    "lpl": ("off", "on"),
    "tdtm": ("off", "on"),
    "sparse_attention": ("off", *SPARSE_KINDS),
    "sparse_residual": ("on", "off"),
    "offload": ("none", "model", "blocks"),
    "dtype": ("fp32", "bf16", "fp16"),
    "path": ("t2v", "i2v", "t2i2v", "distilled"),
    "lora": ("off", "on"),
    "quantize": QUANTIZE_MODES,
    "compile": COMPILE_MODES,
}
"""Every option and its values, the default first."""

FLAGS = {
    "solver": "--solver",
    "cache": "--cache",
    "lpl": "--lpl",
    "tdtm": "--tdtm-steps",
    "sparse_attention": "--sparse-attention",
    "sparse_residual": "sample.sparse_residual",
    "offload": "offload",
    "dtype": "--dtype",
    "path": "path",
    "lora": "--lora",
    "quantize": "--quantize",
    "compile": "sample.compile",
}
"""How a user sets each option, for the refusal's message."""


@dataclass(frozen=True)
class Refusal:
    """A pair of option values that does not combine (unless `unless` holds)."""

    first: str
    first_values: tuple[str, ...]
    second: str
    second_values: tuple[str, ...]
    why: str
    unless: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Other options' values under which the pair works."""

    def applies(self, setting: Setting) -> bool:
        if any(getattr(setting, key) in values for key, values in self.unless.items()):
            return False
        return (
            getattr(setting, self.first) in self.first_values
            and getattr(setting, self.second) in self.second_values
        )

    def message(self, setting: Setting) -> str:
        a, b = getattr(setting, self.first), getattr(setting, self.second)
        return (
            f"{FLAGS[self.first]} {a} and {FLAGS[self.second]} {b} cannot be combined: {self.why}"
        )


REFUSED: tuple[Refusal, ...] = (
    Refusal(
        "sparse_attention",
        SPARSE_KINDS,
        "cache",
        ("smoothcache", "ditfastattn"),
        "the sparse-attention residual is kept per attention call in call order, and this cache "
        "skips some layers' attention, so later layers would add other layers' residuals "
        "(set sample.sparse_residual=false to combine them)",
        unless={"sparse_residual": ("off",)},
    ),
    Refusal(
        "path",
        ("distilled",),
        "tdtm",
        ("on",),
        "token merging averages pairs of latent frames and a distilled image model samples one",
    ),
    Refusal(
        "quantize",
        QUANTIZE_MODES[1:],
        "offload",
        ("model", "blocks"),
        "torchao's quantized weights cannot move between host and device; lower the resolution, "
        "frames or batch so the plan keeps every model resident",
    ),
    Refusal(
        "quantize",
        QUANTIZE_MODES[1:],
        "lora",
        ("on",),
        "LoRA deltas are added to the loaded weights, and torchao's int8/fp8 weights take no "
        "in-place add",
    ),
    Refusal(
        "compile",
        COMPILE_MODES[1:],
        "cache",
        tuple(METHODS)[1:],
        "a caching policy runs the blocks itself with per-step hooks, so the compiled graphs "
        "would not run (vidcli.compile falls back to eager); drop one of them",
    ),
    Refusal(
        "compile",
        COMPILE_MODES[1:],
        "tdtm",
        ("on",),
        "token merging changes attention per step through the attention plan, which a compiled "
        "graph cannot see (the DiT would run eagerly)",
    ),
    Refusal(
        "compile",
        COMPILE_MODES[1:],
        "sparse_attention",
        SPARSE_KINDS,
        "sparse attention chooses its path per step through the attention plan, which a "
        "compiled graph cannot see (the DiT would run eagerly)",
    ),
    Refusal(
        "compile",
        COMPILE_MODES[1:],
        "offload",
        ("blocks",),
        "block streaming moves each block's weights in forward hooks around its call, and a "
        "compiled forward would trace those copies into its graph",
    ),
)
"""Every pair that does not combine; everything else does."""


def refusals(setting: Setting) -> list[str]:
    """The one-line messages of every refused pair in `setting` (empty: it runs)."""
    return [r.message(setting) for r in REFUSED if r.applies(setting)]


def check(setting: Setting) -> None:
    """UsageError (exit 2) with the first refused pair of `setting`."""
    found = refusals(setting)
    if found:
        raise UsageError(found[0])


CLASS_CONDITIONAL: dict[str, tuple[str, ...]] = {
    "solver": ("euler",),
    "cache": ("none",),
    "lpl": ("off",),
    "tdtm": ("off",),
    "sparse_attention": ("off",),
    "lora": ("off",),
    "quantize": ("none",),
    "compile": ("off",),
}
"""The values a class-conditional run (DC-AE-Diffusion, `sampling.class_conditional`) takes: its
released sampler drives a UViT/DiT without the video DiT's hooks, so only the defaults."""


def check_class_conditional(setting: Setting, sampler: str) -> None:
    """UsageError (exit 2) naming the first option a class-conditional run cannot take."""
    for key, values in CLASS_CONDITIONAL.items():
        value = getattr(setting, key)
        if value not in values:
            shown = FLAGS[key] if value == "on" else f"{FLAGS[key]} {value}"
            raise UsageError(
                f"{shown}: class-conditional models sample with their own {sampler} sampler, "
                "which takes no such option; drop it"
            )


SEQUENCE_PARALLEL_REFUSED: dict[str, dict[str, str]] = {
    "cache": {
        "adacache": "its motion score reshapes the residual by latent frames, and a rank holds a "
        "shard of the tokens",
        "toca": "it ranks tokens by score over the sequence, and a rank holds a shard of them",
        "ditfastattn": "it decides from each rank's shard of its attention outputs",
        "speca": "it verifies each prompt's forecast on each rank's shard of the tokens",
        "easycache": "it spends each prompt's error budget from each rank's shard of the tokens",
    },
    "tdtm": {"on": "token merging pairs latent frames that sit on different ranks"},
    "sparse_attention": {
        kind: "the attention plans are not yet checked on the gathered sequence"
        for kind in SPARSE_KINDS
    },
    "compile": {
        mode: "the MMDiT's all-to-all attention is not compiled (vidcli.compile runs a "
        "sequence-parallel DiT eagerly)"
        for mode in COMPILE_MODES[1:]
    },
}
"""Option values a sequence-parallel run (`[launcher] sequence_parallel` > 1) refuses, and why.
The other caches decide from the step (uniform, smoothcache, taylorseer, foca, magcache's
calibrated curve) or from indicators that
`StepRun.relative_l1` all-reduces over the group (teacache, fbcache)."""


def check_sequence_parallel(setting: Setting, size: int) -> None:
    """UsageError (exit 2) for the first option value a sequence-parallel run cannot take."""
    if size == 1:
        return
    for key, refused in SEQUENCE_PARALLEL_REFUSED.items():
        value = getattr(setting, key)
        if value in refused:
            shown = FLAGS[key] if value == "on" else f"{FLAGS[key]} {value}"
            raise UsageError(
                f"{shown} and launcher.sequence_parallel = {size} cannot be combined: "
                f"{refused[value]}"
            )


def sample_setting(sample: SampleSection, **run: str) -> Setting:
    """The `[sample]` options as a Setting; `run` gives the others (offload, dtype, path, lora)."""
    return replace(
        Setting(),
        solver=sample.solver,
        cache=parse_cache(sample.cache, "[sample] cache").method,
        lpl="on" if sample.lpl else "off",
        tdtm="on" if sample.tdtm_steps > 0 else "off",
        sparse_attention=sample.sparse_attention,
        sparse_residual="on" if sample.sparse_residual else "off",
        quantize=sample.quantize,
        compile=sample.compile,
        **run,
    )


def run_setting(recipe: Recipe, placement: Placement, image: bool, lora: bool) -> Setting:
    """The Setting of a `vidcli generate` run, from what is known before any model loads."""
    import torch

    dtypes = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    if distilled_dit(recipe):
        path = "distilled"
    elif recipe.t2i.enabled:
        path = "t2i2v"
    else:
        path = "i2v" if image else "t2v"
    return sample_setting(
        recipe.sample,
        offload=placement.offload,
        dtype=dtypes[placement.dtype],
        path=path,
        lora="on" if lora else "off",
    )


def check_run(recipe: Recipe, placement: Placement, image: bool, lora: bool) -> None:
    """Refuse a generate run whose options do not combine, before its models load."""
    setting = run_setting(recipe, placement, image, lora)
    check(setting)
    check_quantize(setting.quantize, placement.device, placement.dtype, setting.compile)
    check_sequence_parallel(setting, recipe.launcher.sequence_parallel)
    if recipe.sample.compile_ae:
        check_compile_ae(recipe.ae.preset, placement)


def check_compile_ae(ae_preset: str, placement: Placement) -> None:
    """UsageError (exit 2) when `[sample] compile_ae` cannot compile this `[ae]` where it runs.

    The family comes from the preset, as the memory plan reads it (no weights are read);
    `compile_autoencoder` checks the loaded model's class again.
    """
    from vidcli.models.autoencoders import preset_family

    family = preset_family(ae_preset)
    if family != "dc-ae":
        raise UsageError(
            f"--compile-ae: [ae] {ae_preset} is a {family} autoencoder; only the DC-AE family "
            "(video and image dc-ae-* presets) compiles (vidcli.models.dcae.compiled); drop it"
        )
    # The memory plan never offloads with compile_ae (`plan_generate`): what moves the AE here
    # is `--offload`, or a placement not made from the plan.
    if placement.home("ae") != placement.device:
        parked = placement.offload == "none"
        moved = "--offload" if parked else f"offload {placement.offload}"
        raise UsageError(
            f"--compile-ae and {moved} cannot be combined: freezing folds the AE's weights into "
            f"its compiled graph on {placement.device} at the first decode, so the AE cannot go "
            f"back to the host; drop {'--offload' if parked else '--compile-ae'}"
        )


def distilled_dit(recipe: Recipe) -> bool:
    """True when `[dit]` is a guidance-distilled model (flux-dev: `guidance_embed`), read from
    the checkpoint folder's config.json or the preset, without loading weights."""
    from vidcli.models.mmdit import resolve_config

    dit = recipe.dit
    if dit.path and not dit.path.endswith(".safetensors"):
        config = Path(dit.path) / "config.json"
        if config.is_file():
            return bool(json.loads(config.read_text()).get("guidance_embed", False))
    overrides = {k: v for k, v in dit.overrides.items() if k == "guidance_embed"}
    try:
        return resolve_config(dit.preset, **overrides).guidance_embed
    except UsageError:  # no usable preset: the loader reads the weights' own config and says so
        return False


__all__ = [
    "CLASS_CONDITIONAL",
    "OPTIONS",
    "REFUSED",
    "Refusal",
    "Setting",
    "check",
    "check_class_conditional",
    "check_compile_ae",
    "check_run",
    "check_sequence_parallel",
    "refusals",
    "run_setting",
    "sample_setting",
]
