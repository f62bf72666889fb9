"""`train-dit`: rectified flow on autoencoder latents (pre-extracted, or encoded on the fly).

Gives the shared loop a model (the MMDiT), a batch for each step (latents + text embeddings)
and the flow-matching loss; the frozen AE and text encoder stay outside the trained engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vidcli import flow, sequence_parallel
from vidcli.builders import autoencoder_from_section, dit_from_section, text_encoder_from_section
from vidcli.compile import compile_dit
from vidcli.console import log
from vidcli.data.provenance import check_autoencoder, recipe_provenance, write_provenance
from vidcli.data.section import bucket_config, latent_dataset, video_dataset
from vidcli.errors import UsageError
from vidcli.models.content import content_latent, encode_for_dit, needs_content
from vidcli.models.mmdit import MMDiT
from vidcli.models.text import TextEncoder
from vidcli.recipe import Recipe
from vidcli.train import data as train_data
from vidcli.train.dit_loss import flow_loss
from vidcli.train.dit_weights import save_dit_weights
from vidcli.train.launcher import init_process_group, make_engine
from vidcli.train.loop import StageSpec, TrainResult, lr_multiplier, train


def run(recipe: Recipe, resume: str | None = None) -> TrainResult:
    """Train the `[dit]` model on `[data]` latents; see the module docstring."""
    check_compile(recipe)
    rank, world = init_process_group()
    if recipe.adapt.source and recipe.adapt.stage == "least_squares":  # closed form, no steps
        from vidcli.train import adapt

        adapt.check_recipe(recipe)
        latents = latent_dataset(recipe.data)
        provenance = _checked_provenance(recipe, latents.provenance)
        return adapt.least_squares_stage(recipe, latents, provenance, world, resume)
    torch.manual_seed(recipe.train.seed)
    text = text_encoder_from_section(recipe.text)
    # The ranks of a sequence-parallel group read the same batch and split its tokens.
    sp_size = recipe.launcher.sequence_parallel
    data_rank, data_world = sequence_parallel.data_rank(rank, world, sp_size)
    batch_at, latent_channels, latent_thw, provenance = _batches(
        recipe, text, data_rank, data_world
    )
    stage_loss = None  # None: the rectified-flow loss below
    if recipe.adapt.source:  # AE-Adapt: the DiT of another AE, new in/out layers (adapt.py)
        from vidcli.train import adapt

        model, batch_at, stage_loss = adapt.setup(
            recipe, latent_channels, latent_thw, batch_at, data_rank, data_world
        )
    else:
        model = dit_from_section(recipe.dit, latent_channels, text)
    if provenance["ae"].get("content_frame") and not model.config.cond_embed:
        raise UsageError(
            f"[dit] {recipe.dit.preset} has cond_embed = false: on {recipe.ae.preset} latents the "
            "DiT takes the content frame's latent as its condition; set "
            "dit.overrides.cond_embed = true"
        )
    sequence_parallel.check_size(sp_size, world, model.config.num_heads)
    # DeepSpeed averages gradients over all ranks; a group's ranks hold parts of one sample's
    # gradient, so the gathered output's backward scales them by N to make that average a sum.
    model.use_sequence_parallel(
        sequence_parallel.build(sp_size, model.config.num_heads, gather_grad_scale=sp_size)
    )
    if recipe.lora.rank:  # LoRA: frozen DiT + trainable adapters (lora.py)
        from vidcli.train.lora import add_lora

        model = add_lora(model, recipe.lora)
    if torch.cuda.is_available() and not recipe.dit.grad_checkpointing:
        _checkpoint_if_needed(model, recipe, (latent_channels, *latent_thw), world, rank)
    # Before the engine wraps the model: DeepSpeed then calls the compiled forward.
    compile_stats = compile_dit(model, recipe.train.compile)
    engine = make_engine(model, recipe.train, recipe.launcher, lr_multiplier(recipe.train))
    p = model.config.patch_size
    t_lat, h_lat, w_lat = latent_thw
    if h_lat % p or w_lat % p:
        from vidcli.errors import ShapeError

        raise ShapeError(f"latent {h_lat}x{w_lat} is not divisible by the DiT patch size {p}")
    alpha = flow.training_shift_alpha(h_lat, w_lat, t_lat)
    tokens = t_lat * (h_lat // p) * (w_lat // p)
    if rank == 0:
        log.info(
            "train-dit: %s, %.1fM params, %d tokens/sample (latent %dx%dx%d, patch %d), shift %.3f",
            type(model).__name__,
            sum(q.numel() for q in model.parameters()) / 1e6,
            tokens,
            t_lat,
            h_lat,
            w_lat,
            p,
            alpha,
        )
    spec = StageSpec(
        name="dit",
        model=model,
        batch_at=batch_at,
        loss=stage_loss or (lambda eng, batch, step: flow_loss(eng, batch, alpha, p)),
        save_weights=lambda state, folder, stem, written=None: save_dit_weights(
            model, state, folder, stem, recipe.lora, written
        ),
        tokens_per_sample=tokens,
    )
    spec.save_weights = _recording(spec.save_weights, provenance)
    result = train(spec, recipe, engine, rank, world, resume)
    if recipe.train.compile != "off":  # compiled in the first steps, forward and backward
        stats = compile_stats()
        result.metrics.update(compile_s=stats.compile_s, compile_graphs=stats.graphs)
        if rank == 0:
            log.info(
                "train-dit: compile (%s) %d graphs, %.1f s",
                stats.mode,
                stats.graphs,
                stats.compile_s,
            )
    return result


def check_compile(recipe: Recipe) -> None:
    """UsageError (exit 2) for a `[train] compile` the engine cannot run compiled."""
    if recipe.train.compile != "off" and recipe.launcher.zero_stage == 3:
        # Measured on mmdit-tiny, 2 ranks: 43 graphs in 3 steps; a 6-step run hit dynamo's
        # recompile limit, then a tensor of garbage shape (docs/benchmarks.md, compile stacked).
        raise UsageError(
            f"train.compile {recipe.train.compile} and launcher.zero_stage = 3 cannot be "
            "combined: ZeRO-3 gathers each layer's weights in module hooks that break the "
            "compiled graph and recompile it every step; use launcher.zero_stage <= 2 or drop "
            "--compile"
        )


def _checkpoint_if_needed(model: MMDiT, recipe: Recipe, latent, world: int, rank: int) -> None:
    """Turn on per-block activation checkpointing when the memory plan says the step needs it."""
    from vidcli.devices import rank_device
    from vidcli.plans import GB, plan_train

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # LoRA: adapters
    memory = torch.cuda.get_device_properties(rank_device()).total_memory / GB
    plan = plan_train(recipe, latent, memory, world=world, trainable_params=trainable)
    if plan.grad_checkpointing:
        model.set_gradient_checkpointing(True)
        if rank == 0:
            log.info(
                "train-dit: activations %.1f GB would not fit beside %.1f GB of model states on "
                "a %.0f GB device: checkpointing every block (%.1f GB)",
                plan.activations_gb,
                plan.weights_gb + plan.grads_gb + plan.optimizer_gb,
                memory,
                plan.activations_checkpointed_gb,
            )


def _recording(save_weights, provenance: dict[str, Any]):
    """`save_weights` that also writes `latents.json` (what made the latents) beside the model."""

    def save(state: dict[str, torch.Tensor], folder: Path, stem: str, written=None) -> None:
        save_weights(state, folder, stem, written=written)
        if stem == "model":
            write_provenance(folder, provenance)

    return save


def _batches(recipe: Recipe, text: TextEncoder, rank: int, world: int):
    """(batch_at, latent channels, (T', H', W'), provenance) of pre-extracted or on-the-fly latents.

    Pre-extracted latents must come from `[ae]` (a one-line error otherwise). With `[data]
    buckets` each step is one bucket's batch (its shape and batch size; the latent size printed
    is the first clip's) and the timestep shift follows each batch's latent size; with `[data]
    workers`, that many processes read or decode the next steps ahead (`train.data`).
    """
    data, train_cfg = recipe.data, recipe.train
    empty = text.encode([""])
    buckets = bucket_config(data)
    if data.latents:
        dataset = latent_dataset(data)
        provenance = _checked_provenance(recipe, dataset.provenance)
        conditioned = bool(provenance["ae"].get("content_frame"))
        if conditioned and "content_latent" not in dataset[0]:
            raise UsageError(
                f"latents {data.latents} have no content_latent column, which a DiT on "
                f"{recipe.ae.preset} latents needs; re-encode with vidcli prepare-data --encode"
            )
        first = dataset[0]["latent"]

        def load(batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
            latent = batch["latent"].float()
            tokens, pooled = batch["text_tokens"].float(), batch["text_pooled"].float()
            drop = torch.rand(len(latent), generator=gen) < train_cfg.caption_dropout
            tokens[drop] = empty.tokens[0].to(tokens.dtype)
            pooled[drop] = empty.pooled[0].to(pooled.dtype)
            out = {"latent": latent, "text_tokens": tokens, "text_pooled": pooled}
            if conditioned:
                _content_condition(out, batch["content_latent"].float())
            return out

        latent_channels, latent_thw = first.shape[0], tuple(first.shape[1:])
    else:
        ae = autoencoder_from_section(recipe.ae).eval().requires_grad_(False)
        provenance = recipe_provenance(recipe.ae, ae, recipe.text)
        provenance["clip"] = {"num_frames": data.num_frames, "height": data.height}
        provenance["clip"] |= {"width": data.width, "frame_stride": data.frame_stride}
        dataset = video_dataset(data)
        latent_channels, *latent_thw = ae.latent_shape(*dataset.clip_shape(0))
        conditioned = needs_content(ae)

        def load(batch: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
            video = batch["video"]
            with torch.no_grad():
                latent = encode_for_dit(ae, video, gen).float()
                condition = content_latent(ae, ae.content_frame(video)) if conditioned else None
            coins = torch.rand(len(latent), generator=gen).tolist()
            captions = [
                "" if coin < train_cfg.caption_dropout else caption
                for caption, coin in zip(batch["caption"], coins, strict=True)
            ]
            emb = text.encode(captions)
            out = {"latent": latent, "text_tokens": emb.tokens, "text_pooled": emb.pooled}
            if condition is not None:
                _content_condition(out, condition.float())
            return out

    if conditioned and train_cfg.i2v_ratio > 0:
        raise UsageError(
            f"[train] i2v_ratio = {train_cfg.i2v_ratio}: on {recipe.ae.preset} latents every "
            "sample is conditioned on its content frame; set train.i2v_ratio = 0"
        )

    rows = train_data.step_rows(dataset, buckets, train_cfg.batch_size, rank, world, train_cfg.seed)
    fetch = train_data.StepLoader(train_data.StepBatches(dataset, rows), data.workers)

    def batch_at(index: int) -> dict[str, Any]:
        gen = train_data.step_generator(train_cfg.seed, rank, index)
        batch = load(fetch(index), gen)
        batch["generator"] = gen
        if buckets is not None:  # every bucket has its own latent size, hence its own shift
            t_lat, h_lat, w_lat = batch["latent"].shape[2:]
            batch["shift_alpha"] = flow.training_shift_alpha(h_lat, w_lat, t_lat)
        _maybe_image_condition(batch, train_cfg.i2v_ratio, gen)
        return batch

    return batch_at, latent_channels, tuple(latent_thw), provenance


def _checked_provenance(recipe: Recipe, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The latents' provenance, once checked against the recipe's `[ae]`."""
    # Only trained weights have a hash to compare; a fresh preset is identified by its config,
    # so it is built on the meta device (no memory, no time). Neither may move the DiT's init.
    with torch.random.fork_rng():
        ae = autoencoder_from_section(recipe.ae, device=None if recipe.ae.path else "meta")
    current = recipe_provenance(recipe.ae, ae, recipe.text)
    check_autoencoder(recorded, current["ae"], f"latents {recipe.data.latents}")
    return recorded or current


def _content_condition(batch: dict[str, Any], condition: torch.Tensor) -> None:
    """A conditioned AE's content latents (B, C, T, H, W) as the DiT's per-token condition on
    every latent frame (`models.content`); the sampler uses the same (`sampling.phases`)."""
    batch["cond_latent"] = condition
    batch["cond_mask"] = torch.ones_like(condition[:, :1])


def _maybe_image_condition(batch: dict[str, Any], ratio: float, gen: torch.Generator) -> None:
    """With probability `ratio` per sample, condition on its own first latent frame (i2v_head)."""
    latent = batch["latent"]
    if ratio <= 0 or latent.shape[2] < 2:
        return
    chosen = (torch.rand(latent.shape[0], generator=gen) < ratio).float()
    mask = torch.zeros_like(latent[:, :1])
    mask[:, :, 0] = chosen[:, None, None, None]
    batch["cond_mask"] = mask
    batch["cond_latent"] = latent * mask
