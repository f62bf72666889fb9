"""AE-Adapt: move a DiT trained on autoencoder A to a new autoencoder B (`[adapt]` of train-dit).

Only the layers that touch latents depend on the AE: `img_in` (tokens -> width D), `cond_in`
(condition tokens -> D) and `final_layer.linear` (D -> tokens); everything else, the output
head's adaLN modulation included, is kept. The swapped model gets new random copies of those
layers, sized for B's channels and patch size.

Stage 1 (`stage = "align"`, after DC-VideoGen's AE-Adapt-V): the DiT body is frozen and the new
layers learn to put B's latents where the body expects A's. For the same clip (rows of the two
latent sets match by manifest index), with t ~ U(0, 1) and z_A, z_B its latents:

    align_embed = |img_in_B((1-t) z_B) - img_in_A((1-t) z_A)|² / |img_in_A((1-t) z_A)|²
    align_noise = |W_B W_Bᵀ - W_A W_Aᵀ|²_F / |W_A W_Aᵀ|²_F

The first matches the clean part of x_t = (1-t) z + t ε as the body sees it after `img_in`; the
second matches the covariance of the noise part W ε (ε ~ N(0, I) in either latent space), since
independent noise draws cannot be matched sample by sample. `align_cond` does the same for
`cond_in` on first-frame conditions. The new `final_layer.linear` learns from the rectified-flow
loss on B through the frozen body, with the embedders' outputs detached, so each new layer has
one objective. Stage 2 (`stage = "finetune"`) is plain rectified flow from the stage-1
checkpoint (`aligned`), full or with `[lora]`; without `aligned` it is the naive swap.

`stage = "least_squares"` is stage 1 in closed form (`LeastSquaresFit`): ridge least squares
between the two latent sets' tokens, one pass over every row, no optimizer. On the AE-Adapt
benchmark (docs/benchmarks.md) it beats `align` at equal compute. It needs the same token grid
from both AEs (one B token per A token), where `align` also pools a finer A grid.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vidcli.console import log
from vidcli.data.datasets import LatentDataset
from vidcli.data.provenance import write_provenance
from vidcli.data.section import bucket_config, latent_dataset
from vidcli.devices import rank_device
from vidcli.errors import ShapeError, UsageError
from vidcli.fileio import atomic_write_text
from vidcli.models.mmdit import MMDiT, load_dit, pack_latents
from vidcli.recipe import Recipe, dump_recipe, write_resolved_recipe
from vidcli.train import checkpoint as ckpt
from vidcli.train import data as train_data
from vidcli.train.dit_loss import flow_loss
from vidcli.train.dit_weights import save_dit_weights
from vidcli.train.loop import TrainResult

NEW_LAYERS = ("img_in", "cond_in", "final_layer.linear")
"""The layers whose shape depends on the AE (latent channels x patch size)."""


def load_source(path: str) -> MMDiT:
    """The DiT trained on AE A, in float32 (the bundled demo stores bfloat16)."""
    return load_dit(path).float()


def swap_autoencoder(source: MMDiT, in_channels: int, patch_size: int, seed: int) -> MMDiT:
    """A copy of `source` whose NEW_LAYERS are fresh (random, seeded) and sized for AE B.

    in_channels = B's latent channels * patch_size**2. `cond_in` starts at zero weight with the
    source's bias (a zero condition then embeds exactly as before), as a new condition branch does.
    """
    config = replace(source.config, in_channels=in_channels, patch_size=patch_size)
    with torch.device("meta"):
        model = MMDiT(config)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    dim = config.hidden_size
    fresh: dict[str, nn.Module] = {
        "img_in": nn.Linear(in_channels, dim),
        "final_layer.linear": nn.Linear(dim, in_channels),
    }
    if config.cond_embed:
        fresh["cond_in"] = nn.Linear(config.cond_channels, dim)
        nn.init.zeros_(fresh["cond_in"].weight)
        with torch.no_grad():
            fresh["cond_in"].bias.copy_(source.cond_in.bias)
    torch.random.set_rng_state(generator_state)
    state = {k: v for k, v in source.state_dict().items() if not _is_new(k)}
    for name, layer in fresh.items():
        state.update({f"{name}.{k}": v for k, v in layer.state_dict().items()})
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _is_new(key: str) -> bool:
    return any(key.startswith(f"{layer}.") for layer in NEW_LAYERS)


def setup(
    recipe: Recipe,
    latent_channels: int,
    latent_thw: tuple[int, int, int],
    batch_at: Callable[[int], dict[str, Any]],
    rank: int,
    world: int,
) -> tuple[MMDiT, Callable[[int], dict[str, Any]], Callable | None]:
    """train-dit in adapt mode -> (model, batch_at, loss); loss None = the usual flow loss."""
    from vidcli import flow

    check_recipe(recipe)
    source = load_source(recipe.adapt.source)
    model = adapted_model(recipe, source, latent_channels)
    if recipe.adapt.stage == "finetune":
        return model, batch_at, None
    p = model.config.patch_size
    alpha = flow.training_shift_alpha(latent_thw[1], latent_thw[2], latent_thw[0])
    loss = alignment_loss(
        model,
        SourceEmbedders(source),  # the rest of the source DiT is not needed: let it go
        lambda eng, batch: flow_loss(eng, batch, alpha, p),
        recipe.adapt.flow_weight,
    )
    return model, paired_batches(recipe, batch_at, rank, world), loss


def adapted_model(recipe: Recipe, source: MMDiT, latent_channels: int) -> MMDiT:
    """Stage 1: the swapped DiT (`align`: only NEW_LAYERS trainable; `least_squares` fits them).
    Stage 2: the aligned checkpoint (or the naive swap), every weight trainable (LoRA freezes it
    later)."""
    adapt, dit = recipe.adapt, recipe.dit
    patch = dit.patch_size or source.config.patch_size
    in_channels = latent_channels * patch * patch
    if adapt.stage == "finetune" and adapt.aligned:
        model = load_dit(adapt.aligned).float()
        if model.config.in_channels != in_channels or model.config.patch_size != patch:
            raise UsageError(
                f"[adapt] aligned = {adapt.aligned!r} takes {model.config.in_channels}-wide tokens "
                f"at patch {model.config.patch_size}; the recipe's AE needs {in_channels} at "
                f"patch {patch} ([dit] patch_size)"
            )
        return model
    model = swap_autoencoder(source, in_channels, patch, recipe.train.seed)
    if adapt.stage == "align":
        for name, param in model.named_parameters():
            param.requires_grad = _is_new(name)
    return model


def check_recipe(recipe: Recipe) -> None:
    """Every `[adapt]` mistake at once, before any model is built."""
    adapt, problems = recipe.adapt, []
    stage = adapt.stage
    if stage in ("align", "least_squares"):
        if not recipe.data.latents:
            problems.append(f"stage {stage!r} needs B's pre-extracted latents in [data] latents")
        if not adapt.source_latents:
            problems.append(f"stage {stage!r} needs A's latents of the same clips: source_latents")
        if recipe.lora.rank:
            problems.append(f"[lora] applies to stage 'finetune' (stage {stage!r} fits new layers)")
    if recipe.dit.path:
        problems.append("[dit] path is unused in adapt mode: the DiT comes from source")
    if adapt.aligned and adapt.stage != "finetune":
        problems.append("aligned is read by stage 'finetune' only")
    if problems:
        raise UsageError("[adapt] " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# Stage 1: batches with both latents, and the alignment loss


def paired_batches(
    recipe: Recipe, batch_at: Callable[[int], dict[str, Any]], rank: int, world: int
) -> Callable[[int], dict[str, Any]]:
    """`batch_at` plus `source_latent`: A's latent of each row's clip (same manifest index)."""
    target = latent_dataset(recipe.data)
    source, source_row = source_rows(recipe, target)
    train_cfg = recipe.train
    # The same rows train-dit's batches read (buckets included): one function decides both.
    rows = train_data.step_rows(
        target, bucket_config(recipe.data), train_cfg.batch_size, rank, world, train_cfg.seed
    )

    def paired(index: int) -> dict[str, Any]:
        batch = batch_at(index)
        source_latent = [source[source_row[r]]["latent"] for r in rows(index)]
        batch["source_latent"] = torch.stack(source_latent).float().to(batch["latent"].device)
        return batch

    return paired


def source_rows(recipe: Recipe, target: LatentDataset) -> tuple[LatentDataset, list[int]]:
    """(A's latents, the row of A's latents that holds each `target` row's clip): rows pair by
    manifest index, whatever order either shard set lists them in."""
    source = LatentDataset(recipe.adapt.source_latents)
    by_index = {source[i]["index"]: i for i in range(len(source))}
    target_index = [target[i]["index"] for i in range(len(target))]
    missing = sorted(set(target_index) - set(by_index))
    if missing:
        raise UsageError(
            f"[adapt] source_latents = {recipe.adapt.source_latents!r} lacks manifest rows "
            f"{missing[:5]} that [data] latents has: encode the same manifest with both AEs"
        )
    return source, [by_index[i] for i in target_index]


class SourceEmbedders(nn.Module):
    """The source DiT's frozen img_in / cond_in and patch size: all that stage 1 reads of it."""

    def __init__(self, source: MMDiT):
        super().__init__()
        self.img_in, self.cond_in = source.img_in, source.cond_in
        self.patch_size = source.config.patch_size
        self.requires_grad_(False)


def alignment_loss(
    model: MMDiT,
    source: SourceEmbedders,
    flow_loss: Callable[[Any, dict[str, Any]], tuple[torch.Tensor, dict[str, float]]],
    flow_weight: float,
) -> Callable[[Any, dict[str, Any], int], tuple[torch.Tensor, dict[str, float]]]:
    """The stage-1 loss (module docstring): embedding + noise-covariance (+ condition) alignment
    for the new embedders, the flow loss through the frozen body for the new output layer."""
    p_b, p_a = model.config.patch_size, source.patch_size

    def loss(engine: Any, batch: dict[str, Any], step: int):
        z_b, z_a = batch["latent"], batch["source_latent"]  # (B, C, T, H, W) each
        source.to(z_a.device)  # a no-op after the first step
        gen = batch["generator"]
        keep = 1.0 - torch.rand(z_b.shape[0], generator=gen).to(z_b.device)  # (1 - t) each
        scale = keep[:, None, None, None, None]
        tokens_b = pack_latents(z_b * scale, p_b)
        with torch.no_grad():
            target = _pool_to(source.img_in(pack_latents(z_a * scale, p_a)), z_a, p_a, z_b, p_b)
        embed = (model.img_in(tokens_b) - target).pow(2).mean() / target.pow(2).mean()
        cov_b = model.img_in.weight @ model.img_in.weight.T
        cov_a = source.img_in.weight @ source.img_in.weight.T
        noise = (cov_b - cov_a).pow(2).sum() / cov_a.pow(2).sum()
        total = embed + noise
        metrics = {"align_embed": float(embed.detach()), "align_noise": float(noise.detach())}
        if model.cond_in is not None and source.cond_in is not None:
            cond = _condition_alignment(model, source, z_b, z_a, p_b, p_a, gen)
            total = total + cond
            metrics["align_cond"] = float(cond.detach())
        with _detached_outputs(model.img_in, model.cond_in):
            flow, flow_metrics = flow_loss(engine, batch)
        metrics["flow"] = float(flow.detach())
        metrics.update(flow_metrics)
        return total + flow_weight * flow, metrics

    return loss


def _condition_alignment(model, source, z_b, z_a, p_b, p_a, gen) -> torch.Tensor:
    """cond_in alignment on first-frame conditions (mask 1 on frame 0 for a random half)."""
    chosen = (torch.rand(z_b.shape[0], generator=gen) < 0.5).float().to(z_b.device)
    chosen = chosen[:, None, None, None, None]

    def tokens(z: torch.Tensor, p: int) -> torch.Tensor:
        mask = torch.zeros_like(z[:, :1])
        mask[:, :, 0] = 1.0
        mask = mask * chosen
        return pack_latents(torch.cat((mask, z * mask), dim=1), p)

    with torch.no_grad():
        target = _pool_to(source.cond_in(tokens(z_a, p_a)), z_a, p_a, z_b, p_b)
    # Relative to the embedding scale: a zero-weight source cond_in gives a bias-only target.
    ref = source.img_in(pack_latents(z_a, p_a)).detach().pow(2).mean()
    return (model.cond_in(tokens(z_b, p_b)) - target).pow(2).mean() / ref


def _pool_to(h_a: torch.Tensor, z_a, p_a: int, z_b, p_b: int) -> torch.Tensor:
    """A's embeddings (B, L_a, D) on B's token grid: equal grids pass, coarser B averages A."""
    grid_a = (z_a.shape[2], z_a.shape[3] // p_a, z_a.shape[4] // p_a)
    grid_b = (z_b.shape[2], z_b.shape[3] // p_b, z_b.shape[4] // p_b)
    if grid_a == grid_b:
        return h_a
    if any(a % b for a, b in zip(grid_a, grid_b, strict=True)):
        raise ShapeError(
            f"[adapt] token grids differ: A gives {grid_a} (T, H, W) tokens and B {grid_b}; "
            "B's grid must divide A's (choose [dit] patch_size so it does)"
        )
    B, _, D = h_a.shape
    grid = h_a.transpose(1, 2).reshape(B, D, *grid_a)
    kernel = tuple(a // b for a, b in zip(grid_a, grid_b, strict=True))
    return F.avg_pool3d(grid, kernel).flatten(2).transpose(1, 2)


@contextlib.contextmanager
def _detached_outputs(*layers: nn.Module | None) -> Iterator[None]:
    """Inside the block, these layers' outputs carry no gradient back to their weights."""
    handles = [
        layer.register_forward_hook(lambda _m, _i, out: out.detach())
        for layer in layers
        if layer is not None
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---------------------------------------------------------------------------------------------
# Closed-form stage 1: least-squares fits from paired latents


def fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """M (d_out, d_in) minimising |y - x Mᵀ|² + λ|M|², λ = ridge * mean(diag(xᵀx)).

    x (N, d_in), y (N, d_out): rows are paired samples. Solved in float64; exact (ridge 0) when
    y is a linear map of x of full column rank.
    """
    x64, y64 = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    return _solve(x64.T @ x64, x64.T @ y64, ridge).to(x.dtype)


def _solve(gram: torch.Tensor, cross: torch.Tensor, ridge: float) -> torch.Tensor:
    """M = ((xᵀx + λI)⁻¹ xᵀy)ᵀ from the sums fit_linear needs: gram = xᵀx, cross = xᵀy."""
    if ridge:
        eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        gram = gram + ridge * gram.diagonal().mean() * eye
    return torch.linalg.solve(gram, cross).T


class _PairedGram:
    """xᵀx, xᵀy and yᵀy (float64) summed over batches of paired tokens x (B's), y (A's): all that
    the fits both ways (y from x, x from y) and their residuals need, never the tokens."""

    def __init__(self) -> None:
        self.xx = self.xy = self.yy = None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x (..., d_x), y (..., d_y): the same tokens in either latent space."""
        x64, y64 = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        xx, xy, yy = x64.T @ x64, x64.T @ y64, y64.T @ y64
        if self.xx is None:
            self.xx, self.xy, self.yy = xx, xy, yy
        else:
            self.xx, self.xy, self.yy = self.xx + xx, self.xy + xy, self.yy + yy

    def fit(
        self, ridge: float, dtype: torch.dtype, reverse: bool = False
    ) -> tuple[torch.Tensor, float]:
        """(M in `dtype`, relative residual |y - x Mᵀ|² / |y|² of that M): fit_linear(x, y), or
        fit_linear(y, x) when `reverse`."""
        xx, xy, yy = (self.yy, self.xy.T, self.xx) if reverse else (self.xx, self.xy, self.yy)
        m = _solve(xx, xy, ridge).to(dtype)
        m64 = m.double()
        # |y - x Mᵀ|² = tr(yᵀy) - 2 tr(M xᵀy) + tr(M xᵀx Mᵀ)
        error = yy.trace() - 2 * (m64 * xy.T).sum() + (m64 @ xx * m64).sum()
        return m, max(0.0, float(error / yy.trace()))


class LeastSquaresFit:
    """Stage 1 in closed form for the swap `model`, from paired latents fed batch by batch.

    With tok_A ≈ M tok_B and tok_B ≈ N tok_A (ridge least squares over every token added):

        img_in_B = img_in_A ∘ M          (the body sees what it saw on A's tokens)
        final_B  = N ∘ final_A           (A's velocity prediction, mapped into B's space)
        cond_in_B = cond_in_A ∘ M_cond   (fitted the same way on condition tokens)

    Only the Gram matrices are kept, (d_A + d_B)² numbers per fit, so memory does not grow with
    the data. Fitting one batch of every latent gives `least_squares_alignment`.
    """

    def __init__(self, model: MMDiT, source: MMDiT):
        self.model, self.source = model, source
        self.conditioned = model.cond_in is not None and source.cond_in is not None
        self.tokens, self.cond = _PairedGram(), _PairedGram()
        self.samples = self.token_count = 0

    @torch.no_grad()
    def add(self, z_b: torch.Tensor, z_a: torch.Tensor) -> None:
        """z_b, z_a (N, C, T, H, W): B's and A's latents of the same N clips."""
        p_b, p_a = self.model.config.patch_size, self.source.config.patch_size
        grid_b = paired_token_grid(z_b.shape[1:], p_b, z_a.shape[1:], p_a)
        if z_b.shape[0] != z_a.shape[0]:
            raise ShapeError(f"{z_a.shape[0]} latents of A paired with {z_b.shape[0]} of B")
        self.tokens.add(pack_latents(z_b, p_b), pack_latents(z_a, p_a))
        if self.conditioned:
            self.cond.add(
                pack_latents(torch.cat((torch.ones_like(z_b[:, :1]), z_b), dim=1), p_b),
                pack_latents(torch.cat((torch.ones_like(z_a[:, :1]), z_a), dim=1), p_a),
            )
        self.samples += z_b.shape[0]
        self.token_count += z_b.shape[0] * grid_b[0] * grid_b[1] * grid_b[2]

    @torch.no_grad()
    def apply(self, ridge: float = 1e-4) -> dict[str, float]:
        """Write the fitted NEW_LAYERS into the model; each fit's relative residual
        |y - x Mᵀ|² / |y|² (0: B is a linear map of A)."""
        if self.tokens.xx is None:
            raise UsageError("[adapt] least-squares alignment needs at least one latent pair")
        model, source = self.model, self.source
        weight = source.img_in.weight  # the maps multiply the source's weights, on its device
        to_a, fit_in = self.tokens.fit(ridge, weight.dtype)
        to_b, fit_out = self.tokens.fit(ridge, weight.dtype, reverse=True)
        model.img_in.weight.copy_(weight @ to_a.to(weight.device))
        model.img_in.bias.copy_(source.img_in.bias)
        out_b, out_a = model.final_layer.linear, source.final_layer.linear
        to_b = to_b.to(weight.device)
        out_b.weight.copy_(to_b @ out_a.weight)
        out_b.bias.copy_(to_b @ out_a.bias)
        report = {"fit_in": fit_in, "fit_out": fit_out}
        if self.conditioned:
            to_a_cond, report["fit_cond"] = self.cond.fit(ridge, weight.dtype)
            model.cond_in.weight.copy_(source.cond_in.weight @ to_a_cond.to(weight.device))
            model.cond_in.bias.copy_(source.cond_in.bias)
        return report


ONE_PROCESS = (
    "[adapt] stage 'least_squares' is one closed-form pass in one process: drop --nproc "
    "and --hostfile ([launcher] nproc / hostfile)"
)
"""The refusal of a least-squares stage launched on several processes (run and --plan)."""


def least_squares_stage(
    recipe: Recipe,
    target: LatentDataset,
    provenance: dict[str, Any],
    world: int,
    resume: str | None,
) -> TrainResult:
    """train-dit with `stage = "least_squares"`: fit the swap on every row of `target` (B's
    latents) paired with `source_latents`, then publish it as checkpoint step 0.

    The checkpoint holds what a trained one holds but the engine state (model.safetensors +
    config.json, latents.json, recipe.toml, trainer_state.json, manifest.json), so `stage =
    "finetune"` starts from `aligned = ".../checkpoints/latest"`. metrics.jsonl gets one record
    with the fit residuals. Rows are read `[train] batch_size` at a time; a batch holds rows of
    one latent shape (buckets may mix shapes).
    """
    if world > 1:
        raise UsageError(
            f"[adapt] stage 'least_squares' is one closed-form pass in one process; it was "
            f"launched on {world} ranks: run it alone (no torchrun / deepspeed launcher)"
        )
    if resume:
        raise UsageError(
            f"--resume {resume}: [adapt] stage 'least_squares' has no steps to resume; refit "
            "with --overwrite"
        )
    start = time.perf_counter()
    source = load_source(recipe.adapt.source)
    model = adapted_model(recipe, source, target[0]["latent"].shape[0])
    fit = LeastSquaresFit(model, source)
    source_latents, source_row = source_rows(recipe, target)
    device = rank_device()
    batch = recipe.train.batch_size
    for first in range(0, len(target), batch):
        by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for row in range(first, min(first + batch, len(target))):
            z_b, z_a = target[row]["latent"], source_latents[source_row[row]]["latent"]
            by_shape.setdefault((z_b.shape, z_a.shape), []).append((z_b, z_a))
        for pairs in by_shape.values():
            z_b, z_a = (torch.stack(z).float().to(device) for z in zip(*pairs, strict=True))
            fit.add(z_b, z_a)
    report = fit.apply(recipe.adapt.ridge)
    wall = time.perf_counter() - start

    output = Path(recipe.train.output)
    checkpoints = output / "checkpoints"
    output.mkdir(parents=True, exist_ok=True)
    write_resolved_recipe(recipe, output)
    staging = ckpt.staging_dir(checkpoints, 0)
    staging.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_dit_weights(model, weights, staging, "model")
    write_provenance(staging, provenance)
    ckpt.write_text_hashed(staging / "recipe.toml", staging, dump_recipe(recipe), None)
    lineage = [f"{uuid.uuid4().hex}-{0:07d}"]
    ckpt.write_state(staging, ckpt.TrainerState(0, fit.samples, lineage=lineage))
    ckpt.write_manifest(staging)
    folder = ckpt.publish(checkpoints, 0, recipe.train.keep_last, lineage)
    record = {"step": 0, **report, "samples": fit.samples, "tokens": fit.token_count}
    record["fit_s"] = wall
    atomic_write_text(output / "metrics.jsonl", json.dumps(record) + "\n")
    log.info(
        "train-dit: least-squares alignment over %d clips (%d tokens) in %.1f s; relative "
        "residuals %s",
        fit.samples,
        fit.token_count,
        wall,
        ", ".join(f"{k} {v:.4f}" for k, v in report.items()),
    )
    return TrainResult(
        stage="dit",
        steps=0,
        final_loss=report["fit_out"],  # the output layer's fit stands in for the flow loss
        wall_time_s=wall,
        output=str(output),
        checkpoint=str(folder),
        samples_per_s=fit.samples / wall if wall > 0 else 0.0,
        tokens_per_s=fit.token_count / wall if wall > 0 else 0.0,
        metrics={k: v for k, v in record.items() if k != "step"},
    )


def _token_grid(shape: tuple[int, ...], patch: int) -> tuple[int, int, int]:
    """(T, H / p, W / p) of a latent of shape (C, T, H, W)."""
    if shape[2] % patch or shape[3] % patch:
        raise ShapeError(f"latent {shape[2]}x{shape[3]} is not divisible by patch {patch}")
    return shape[1], shape[2] // patch, shape[3] // patch


def paired_token_grid(
    shape_b: tuple[int, ...], p_b: int, shape_a: tuple[int, ...], p_a: int
) -> tuple[int, int, int]:
    """The (T, H, W) token grid B's latent (C, T, H, W) at patch p_b shares with A's at p_a;
    the least-squares fit pairs tokens one to one, so the grids must be equal."""
    grid_b, grid_a = _token_grid(shape_b, p_b), _token_grid(shape_a, p_a)
    if grid_b != grid_a:
        raise ShapeError(
            f"[adapt] least-squares alignment pairs tokens one to one: A's latents give a "
            f"{grid_a} (T, H, W) token grid at the source's patch {p_a}, B's {grid_b} at "
            f"patch {p_b} (choose [dit] patch_size so they match)"
        )
    return grid_b


def least_squares_alignment(
    model: MMDiT, source: MMDiT, z_b: torch.Tensor, z_a: torch.Tensor, ridge: float = 1e-4
) -> dict[str, float]:
    """Stage 1 in closed form on latents in memory: `LeastSquaresFit` with one batch.

    z_b, z_a (N, C, T, H, W): B's and A's latents of the same clips, on the same token grid.
    Returns each fit's relative residual (`LeastSquaresFit.apply`).
    """
    fit = LeastSquaresFit(model, source)
    fit.add(z_b, z_a)
    return fit.apply(ridge)


def least_squares_flops(d_in: int, d_out: int, samples: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one `fit_linear`: Gram, cross term, solve (LU, 2/3 d³)."""
    return 2 * samples * d_in * d_in + 2 * samples * d_in * d_out + (2 * d_in**3) // 3


# ---------------------------------------------------------------------------------------------
# Compute accounting: equal budgets in FLOPs


def step_flops(step: Callable[[], Any]) -> int:
    """FLOPs one call of `step` runs (forward and backward), by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def steps_for_budget(budget: float, flops_per_step: float, spent: float = 0.0) -> int:
    """How many steps of `flops_per_step` fit in what is left of `budget` after `spent`."""
    if flops_per_step <= 0:
        raise ValueError("flops_per_step must be positive")
    return max(0, int((budget - spent) // flops_per_step))
