"""`train-ae`: DC-AE reconstruction training (L1 + LPIPS), then an optional hinge-GAN phase;
a Reducio-VAE trains with upstream's objective instead (`reducio_ae`).

The loss is Open-Sora's stage-1 objective per element: |x - x̂| + w_lpips · LPIPS(x, x̂) averaged
over frames; from `[train] gan_start` on, the generator also gets λ·(-mean D(x̂)) with λ the
adaptive weight, and a 3-D PatchGAN discriminator (its own engine) learns with the hinge loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from safetensors.torch import save_file

from vidcli.builders import autoencoder_from_section
from vidcli.data.section import bucket_config, video_dataset
from vidcli.errors import UsageError
from vidcli.metrics import psnr
from vidcli.models.content import needs_content
from vidcli.models.dcae import DCAE, write_autoencoder_files
from vidcli.models.reducio import write_reducio_files
from vidcli.recipe import Recipe
from vidcli.train import data as train_data
from vidcli.train import reducio_ae, seeds
from vidcli.train.checkpoint import Digests, write_safetensors_hashed
from vidcli.train.launcher import init_process_group, make_engine
from vidcli.train.loop import StageSpec, TrainResult, lr_multiplier, train
from vidcli.train.losses import (
    PatchDiscriminator3D,
    adaptive_gan_weight,
    adversarial_step,
    perceptual_loss,
)


def run(recipe: Recipe, resume: str | None = None) -> TrainResult:
    """Train the `[ae]` autoencoder on `[data]` clips; see the module docstring."""
    rank, world = init_process_group()
    torch.manual_seed(recipe.train.seed)
    model = autoencoder_from_section(recipe.ae).train()
    model.tiling = None  # training clips are one tile; tiling is an inference memory tool
    model.check_input_shape(recipe.data.num_frames, recipe.data.height, recipe.data.width)
    conditioned = needs_content(model)  # Reducio: its own objective (`reducio_ae`)
    if conditioned:
        _check_conditioned(recipe)
        if not recipe.ae.path:  # from scratch (a resume loads its checkpoint over this)
            reducio_ae.init_posterior(model)
    lpips = perceptual_loss(recipe.train)  # a usage error, not an L1-only run, if weights lack
    engine = make_engine(model, recipe.train, recipe.launcher, lr_multiplier(recipe.train))
    if lpips is not None:
        lpips.to(engine.device)  # batches arrive on the engine's device (the step loop moves them)
    discriminator = None
    if recipe.train.gan_start >= 0:
        if recipe.launcher.zero_stage == 3:
            raise UsageError("[train] gan_start needs launcher.zero_stage <= 2 (adaptive weight)")
        d_train = type(recipe.train)(**{**vars(recipe.train), "lr": recipe.train.disc_lr})
        if conditioned:
            d_model, d_rate = (
                reducio_ae.ReducioDiscriminator3D(),
                reducio_ae.discriminator_multiplier,
            )
        else:
            d_model, d_rate = PatchDiscriminator3D(), lambda step: 1.0
        discriminator = make_engine(d_model, d_train, recipe.launcher, d_rate)
    batch_at = _batches(recipe, rank, world)

    def loss(eng: Any, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if conditioned:
            args = (recipe.train, lpips, discriminator, _frozen_copy)
            return reducio_ae.reducio_loss(eng, batch, step, *args)
        return reconstruction_loss(eng, model, batch, step, recipe, lpips, discriminator)

    spec = StageSpec(
        name="ae",
        model=model,
        batch_at=batch_at,
        loss=loss,
        save_weights=lambda state, folder, stem, written=None: save_ae_weights(
            model, state, folder, stem, written
        ),
        extra_engines={"discriminator": discriminator} if discriminator is not None else {},
    )
    return train(spec, recipe, engine, rank, world, resume)


def _check_conditioned(recipe: Recipe) -> None:
    """Refuse what a conditioned AE (Reducio: fixed clip length, whole-parameter loss) cannot do."""
    if recipe.data.image_ratio > 0:
        raise UsageError(
            f"[data] image_ratio = {recipe.data.image_ratio}: {recipe.ae.preset} trains on "
            f"{recipe.data.num_frames}-frame clips only; set data.image_ratio = 0"
        )
    if recipe.launcher.zero_stage == 3:
        raise UsageError(
            f"{recipe.ae.preset} needs launcher.zero_stage <= 2 (its loss reads the posterior "
            "and the decoder's last conv directly)"
        )


def reconstruction_loss(
    engine: Any,
    model: DCAE,
    batch: torch.Tensor,
    step: int,
    recipe: Recipe,
    lpips: torch.nn.Module | None,
    discriminator: Any | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(generator loss, metrics) for a batch `(B, 3, T, H, W)` in [-1, 1]."""
    recon = engine(batch)

    def rec_loss(x_hat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = (x_hat.float() - batch).abs().mean()
        parts = {"l1": loss.item()}
        if lpips is not None and recipe.train.lpips_weight > 0:
            frames = rearrange(batch, "b c t h w -> (b t) c h w")
            perceptual = lpips(rearrange(x_hat.float(), "b c t h w -> (b t) c h w"), frames)
            loss = loss + recipe.train.lpips_weight * perceptual.mean()
            parts["lpips"] = perceptual.mean().item()
        return loss, parts

    loss, metrics = rec_loss(recon)
    metrics["psnr"] = psnr(recon.detach().float().clamp(-1, 1), batch, 2.0)
    if discriminator is not None and step >= recipe.train.gan_start:
        # The generator sees a frozen copy of D: a backward through D's own engine would fire
        # its ZeRO gradient hooks and leak generator gradients into D's next step. The adaptive
        # weight is measured at the decoder output (Open-Sora: at its last conv weight), on a
        # detached copy, for the same reason with the AE's engine.
        frozen_d = _frozen_copy(discriminator.module)
        x_hat = recon.detach().requires_grad_()
        weight = adaptive_gan_weight(
            rec_loss(x_hat)[0], -frozen_d(x_hat).mean(), x_hat, recipe.train.gan_weight
        )
        loss, gan_metrics = adversarial_step(loss, weight, frozen_d, recon, batch, discriminator)
        metrics |= gan_metrics
    return loss, metrics


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A hook-free copy of `module` with the same weights and no trainable parameters."""
    copy = type(module)().to(next(module.parameters()).device)
    copy.load_state_dict(module.state_dict())
    return copy.train(module.training).requires_grad_(False)


def save_ae_weights(
    model: DCAE,
    state: dict[str, torch.Tensor],
    folder: Path,
    stem: str,
    written: Digests | None = None,
) -> None:
    """`model.safetensors` + config.json (for `load_autoencoder`), or `ema.safetensors`.

    written: a checkpoint's digests; when given, `<stem>.safetensors` is hashed as it is written
    and recorded there (`write_manifest` then does not read it back).
    """

    def write(
        tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None
    ) -> None:
        if written is None:
            save_file(tensors, str(path), metadata=metadata)
        else:
            write_safetensors_hashed(tensors, path, folder, written, metadata)

    if stem == "model":
        export = type(model)(model.config)
        export.load_state_dict(state)
        if needs_content(model):
            write_reducio_files(export, folder, write)
        else:
            write_autoencoder_files(export, folder, write)  # `folder`: the checkpoint's staging
    else:
        write(state, folder / f"{stem}.safetensors", None)


def _batches(recipe: Recipe, rank: int, world: int):
    """Video batches `(B, 3, T, H, W)`; with `image_ratio`, some steps are single frames (T = 1).

    With `[data] buckets` each step is one bucket's batch (its shape, its batch size); with
    `[data] workers`, that many processes decode the next steps ahead (`train.data`).
    """
    data, train_cfg = recipe.data, recipe.train
    dataset = video_dataset(data)
    rows = train_data.step_rows(
        dataset, bucket_config(data), train_cfg.batch_size, rank, world, train_cfg.seed
    )
    load = train_data.StepLoader(train_data.StepBatches(dataset, rows), data.workers)

    def batch_at(index: int) -> torch.Tensor:
        video = load(index)["video"]
        gen = frame_choice_generator(train_cfg.seed, index)
        if data.image_ratio > 0 and torch.rand(1, generator=gen).item() < data.image_ratio:
            pick = int(torch.randint(video.shape[2], (1,), generator=gen))
            video = video[:, :, pick : pick + 1]
        return video

    return batch_at


def frame_choice_generator(seed: int, index: int) -> torch.Generator:
    """The generator of micro-step `index`'s image-or-video choice (and its frame).

    One for all ranks, so every rank makes the same choice; its own stream (`seeds.AE_FRAMES`),
    so it does not replay the draws of rank 0's batch generator (`step_generator(seed, 0, i)`).
    """
    return torch.Generator().manual_seed(seeds.step_seed(seed, 0, index, seeds.AE_FRAMES))
