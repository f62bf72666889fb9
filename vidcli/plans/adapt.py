"""The plan of train-dit's closed-form AE-Adapt stage (`[adapt] stage = "least_squares"`).

That stage never runs the DiT and takes no step: `LeastSquaresFit` streams B's and A's latents
once, `[train] batch_size` rows at a time, into float64 Gram matrices on the device, solves them
and writes the new layers into the fp32 DiT, which stays on the CPU. So the device holds the
Gram matrices, one batch of latents and its token copies; the host holds the DiT and the shards'
row-group caches; the work is one pass over the shards. Shapes and row counts come from the
shards' `index` / `latent_shape` columns, without decoding a latent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torch import nn

from vidcli.errors import UsageError
from vidcli.plans import meta
from vidcli.plans.meta import param_count
from vidcli.plans.sizes import GB, RESERVED_GB
from vidcli.recipe import Recipe

F32, F64 = 4, 8


@dataclass
class LeastSquaresPlan:
    """What `train-dit` with `[adapt] stage = "least_squares"` holds and does, in one process."""

    gpu_memory_gb: float | None
    rows: int
    """Rows of `[data] latents` (B's), each paired with A's row of the same manifest index."""
    tokens: int
    batch_size: int
    latent_b: tuple[int, ...]
    """(C, T, H, W) of B's largest latent; `latent_a` is A's latent of the same clip."""
    latent_a: tuple[int, ...]
    token_width_b: int
    """C·p² of B's tokens at the recipe's patch size; `token_width_a` of A's at the source's."""
    token_width_a: int
    conditioned: bool
    """The source DiT has a condition branch: cond_in is fitted too, on C + 1 channels."""
    gram_gb: float
    """The float64 Gram matrices xᵀx, xᵀy, yᵀy kept over the whole pass (one set per fit)."""
    batch_gb: float
    """The largest batch's latents on the device (float32, B's and A's)."""
    peak_gb: float
    """Device peak: one batch, its float32 / float64 token copies, the Gram sums, the reserve."""
    fits: bool
    source_params: int
    dit_host_gb: float
    """The source DiT in float32 on the CPU, plus the swap's new layers (it shares the body)."""
    cache_host_gb: float
    """At most this much of decoded shard row groups stays cached (both latent sets)."""
    shards_gb: float
    """Bytes of shards read once: B's and A's `latents-*.parquet`."""
    flops: float
    """Gram products over every token, plus the solves."""
    stage: str = "least_squares"
    world: int = 1
    notes: list[str] = field(default_factory=list)

    def stdout_lines(self) -> list[str]:
        limit = "no limit" if self.gpu_memory_gb is None else f"{self.gpu_memory_gb:g} GB"
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        size = lambda gb: f"{gb:.2f} GB" if gb >= 0.1 else f"{gb * 1e3:.3g} MB"  # noqa: E731
        return [
            f"train-dit plan: [adapt] stage 'least_squares', 1 process ({limit}): closed-form "
            "ridge fits, no steps, no gradients, no DiT forward",
            f"latents: B {shape(self.latent_b)} -> {self.token_width_b}-wide tokens, "
            f"A {shape(self.latent_a)} -> {self.token_width_a}-wide, batch {self.batch_size}"
            + (", cond_in fitted too" if self.conditioned else ""),
            f"device: Gram matrices {size(self.gram_gb)} (float64), largest batch "
            f"{size(self.batch_gb)} of latents -> peak {self.peak_gb:.2f} GB with the "
            f"{RESERVED_GB:g} GB reserve: " + ("fits" if self.fits else "does not fit"),
            f"host: source DiT {size(self.dit_host_gb)} (float32, on the CPU), shard cache "
            f"<= {size(self.cache_host_gb)}",
            f"work: one pass over {self.rows} rows ({self.tokens} tokens, "
            f"{size(self.shards_gb)} of shards), {self.flops / 1e12:.3g} TFLOP",
            *(f"note: {n}" for n in self.notes),
        ]


@dataclass
class _Shards:
    """What a latents folder's shards say without decoding a latent."""

    shapes: dict[int, tuple[int, ...]]
    """Manifest index -> latent shape (C, T, H, W), in the order LatentDataset reads rows."""
    file_bytes: int
    cached_bytes: int
    """The most decoded row-group bytes a LatentDataset over them keeps (its LRU cache)."""


def _read_shards(folder: str) -> _Shards:
    from vidcli.data.datasets import DEFAULT_LATENT_CACHE_BYTES

    shards = sorted(Path(folder).glob("latents-*.parquet"))  # LatentDataset's row order
    if not shards:
        raise UsageError(f"no latents-*.parquet shards in {folder}; run prepare-data --encode")
    shapes: dict[int, tuple[int, ...]] = {}
    file_bytes = decoded = largest_group = 0
    for shard in shards:
        table = pq.read_table(shard, columns=["index", "latent_shape"])
        shapes.update(
            zip(
                table["index"].to_pylist(),
                map(tuple, table["latent_shape"].to_pylist()),
                strict=True,
            )
        )
        metadata = pq.read_metadata(shard)
        groups = [metadata.row_group(g).total_byte_size for g in range(metadata.num_row_groups)]
        decoded += sum(groups)
        largest_group = max(largest_group, *groups)
        file_bytes += shard.stat().st_size
    # The cache keeps its newest group even when that alone is over the limit.
    cached = min(decoded, max(DEFAULT_LATENT_CACHE_BYTES, largest_group))
    return _Shards(shapes, file_bytes, cached)


def gram_bytes(d_b: int, d_a: int) -> int:
    """xᵀx, xᵀy, yᵀy of tokens x (N, d_b), y (N, d_a) in float64."""
    return F64 * (d_b * d_b + d_b * d_a + d_a * d_a)


def fit_peak_bytes(
    n: int,
    latent_b: tuple[int, ...],
    latent_a: tuple[int, ...],
    model: nn.Module,
    source: nn.Module,
) -> int:
    """Device bytes of `LeastSquaresFit(model, source)` over batches of n float32 latent pairs
    (C, T, H, W): the peak of an add after the first, or of the solves, whichever is more.

    The add is measured on `meta` tensors (its layout copies depend on the patch sizes): the
    two latents, their packed tokens and float64 copies, the Gram sums so far, the batch's and
    the new sums, for the tokens and then the condition tokens (one more channel). The solves
    cannot run on `meta` (they read a residual back), so they are bounded: every Gram matrix;
    for the widest fit (d_in, d_out) the identity, the ridge-shifted Gram, its LU factors, the
    solution and two residual temporaries; the fitted maps in float32 and float64; the products
    with the D-wide weights (on the device only when it is the CPU). With any real batch the
    add is far larger (its tokens outnumber the widths).
    """
    from vidcli.train.adapt import LeastSquaresFit

    fit = LeastSquaresFit(model, source)

    def two_adds() -> None:
        z_b = torch.empty(n, *latent_b, device="meta")
        z_a = torch.empty(n, *latent_a, device="meta")
        fit.add(z_b, z_a)
        fit.add(z_b, z_a)

    add = meta.measure_peak(two_adds)
    p_b, p_a = model.config.patch_size, source.config.patch_size
    d_b, d_a = latent_b[0] * p_b * p_b, latent_a[0] * p_a * p_a
    fits = [(d_b, d_a), (d_a, d_b)]
    grams = gram_bytes(d_b, d_a)
    if fit.conditioned:
        e_b, e_a = d_b + p_b * p_b, d_a + p_a * p_a
        fits.append((e_b, e_a))
        grams += gram_bytes(e_b, e_a)
    widest = max(F64 * (3 * d * d + 3 * d * out) for d, out in fits)
    maps = (F32 + F64) * sum(d * out for d, out in fits)
    with_weights = F32 * model.config.hidden_size * sum(d for d, _ in fits)
    return max(add, grams + widest + maps + with_weights)


def least_squares_plan(recipe: Recipe, gpu_memory_gb: float | None) -> LeastSquaresPlan:
    """`vidcli train-dit --plan` for `[adapt] stage = "least_squares"`: refuses what the run
    refuses (several processes, recipe mistakes, unequal token grids) before reading shapes."""
    from vidcli.models.mmdit import MMDiT
    from vidcli.models.mmdit.config import MMDiTConfig
    from vidcli.train import adapt

    launcher = recipe.launcher
    if launcher.nproc != 1 or launcher.hostfile:
        raise UsageError(adapt.ONE_PROCESS)
    adapt.check_recipe(recipe)
    config_file = Path(recipe.adapt.source) / "config.json"
    if not config_file.is_file():
        raise UsageError(
            f"[adapt] source = {recipe.adapt.source!r} has no config.json: name a checkpoint or "
            "model folder vidcli wrote"
        )
    source_config = MMDiTConfig.from_dict(json.loads(config_file.read_text()), str(config_file))
    b, a = _read_shards(recipe.data.latents), _read_shards(recipe.adapt.source_latents)
    missing = sorted(set(b.shapes) - set(a.shapes))
    if missing:
        raise UsageError(
            f"[adapt] source_latents = {recipe.adapt.source_latents!r} lacks manifest rows "
            f"{missing[:5]} that [data] latents has: encode the same manifest with both AEs"
        )
    p_a = source_config.patch_size
    p_b = recipe.dit.patch_size or p_a
    conditioned = source_config.cond_embed
    pairs = [(shape, a.shapes[index]) for index, shape in b.shapes.items()]
    channels_b = pairs[0][0][0]
    d_b, d_a = channels_b * p_b * p_b, source_config.in_channels

    with torch.device("meta"):
        source = MMDiT(source_config)
        swap = MMDiT(replace(source_config, in_channels=d_b, patch_size=p_b))
    # The stage reads batch_size rows at a time and adds each group of equal shapes at once.
    batch, peak, largest, largest_n, tokens = recipe.train.batch_size, 0, pairs[0], 0, 0
    peaks: dict[tuple, int] = {}  # (n, B's shape, A's shape) -> bytes: a few distinct ones
    for first in range(0, len(pairs), batch):
        groups: dict[tuple, int] = {}
        for pair in pairs[first : first + batch]:
            groups[pair] = groups.get(pair, 0) + 1
        for (shape_b, shape_a), n in groups.items():
            grid = adapt.paired_token_grid(shape_b, p_b, shape_a, p_a)
            tokens += n * grid[0] * grid[1] * grid[2]
            key = (n, shape_b, shape_a)
            if key not in peaks:
                peaks[key] = fit_peak_bytes(n, shape_b, shape_a, swap, source)
            if peaks[key] > peak:
                peak, largest, largest_n = peaks[key], (shape_b, shape_a), n
    batch_bytes = F32 * largest_n * sum(torch.Size(s).numel() for s in largest)
    grams = gram_bytes(d_b, d_a)
    e_b, e_a = d_b + p_b * p_b, d_a + p_a * p_a
    if conditioned:
        grams += gram_bytes(e_b, e_a)

    source_params = param_count(source)
    new_params = sum(
        p.numel()
        for name, p in swap.named_parameters()
        if any(name.startswith(f"{layer}.") for layer in adapt.NEW_LAYERS)
    )
    # Gram products: xᵀx, xᵀy, yᵀy per token (2 FLOPs a multiply-add); each solve: LU then
    # the triangular solves for every output column.
    flops = 2 * tokens * (d_b * d_b + d_b * d_a + d_a * d_a)
    solves = [(d_b, d_a), (d_a, d_b)]
    if conditioned:
        flops += 2 * tokens * (e_b * e_b + e_b * e_a + e_a * e_a)
        solves.append((e_b, e_a))
    flops += sum(2 * d**3 / 3 + 2 * d * d * out for d, out in solves)

    peak_gb = peak / GB + RESERVED_GB
    fits = gpu_memory_gb is None or peak_gb <= gpu_memory_gb
    notes = []
    if not fits:
        notes.append(
            f"does not fit in {gpu_memory_gb:g} GB: lower [train] batch_size (the Grams alone "
            f"take {grams / GB:.2f} GB)"
        )
    return LeastSquaresPlan(
        gpu_memory_gb=gpu_memory_gb,
        rows=len(pairs),
        tokens=tokens,
        batch_size=batch,
        latent_b=largest[0],
        latent_a=largest[1],
        token_width_b=d_b,
        token_width_a=d_a,
        conditioned=conditioned,
        gram_gb=grams / GB,
        batch_gb=batch_bytes / GB,
        peak_gb=peak_gb,
        fits=fits,
        source_params=source_params,
        dit_host_gb=F32 * (source_params + new_params) / GB,
        cache_host_gb=(a.cached_bytes + b.cached_bytes) / GB,
        shards_gb=(a.file_bytes + b.file_bytes) / GB,
        flops=float(flops),
        notes=notes,
    )
