"""The training plan: what one rank of `vidcli train-dit` holds, before any weight is loaded.

It counts weights, gradients and AdamW states per ZeRO stage and rank count, and activations
with and without per-block checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidcli.plans.adapt import LeastSquaresPlan, least_squares_plan
from vidcli.plans.meta import param_count, saved_for_backward
from vidcli.plans.sizes import (
    ACTIVATION_MARGIN,
    GB,
    RESERVED_GB,
    device_memory_gb,
    dit_inputs,
    meta_autoencoder,
    meta_dit,
    outside_blocks,
    stream_tensors,
    text_widths,
)
from vidcli.recipe import Recipe
from vidcli.sequence_parallel import exchange_elements, token_share


@dataclass
class TrainPlan:
    """What one rank of `vidcli train-dit` holds: model states per ZeRO stage, activations."""

    world: int
    zero_stage: int
    precision: str
    params: int
    trainable_params: int
    tokens_per_sample: int
    batch_size: int
    weights_gb: float
    grads_gb: float
    optimizer_gb: float
    ema_gb: float
    """The EMA shadow: fp32 copies of the trainable parameters, whole on every rank up to ZeRO-2,
    this rank's partition under ZeRO-3 (`train.ema`; `ema_bytes`)."""
    bucket: str | None
    """The `[data] buckets` bucket planned for: the largest batch x tokens (None: no buckets)."""
    activations_gb: float
    activations_checkpointed_gb: float
    by_zero_stage_gb: dict[str, float]
    grad_checkpointing: bool
    gpu_memory_gb: float | None
    peak_gb: float
    fits: bool
    notes: list[str] = field(default_factory=list)
    sequence_parallel: int = 1
    """`[launcher] sequence_parallel` N: a rank holds 1/N of each sample's image tokens."""
    all_to_all_gb: float = 0.0
    """One attention call's exchange buffers per rank, inside the activations (N > 1)."""

    def stdout_lines(self) -> list[str]:
        limit = "no limit" if self.gpu_memory_gb is None else f"{self.gpu_memory_gb:g} GB"
        sp = (
            []
            if self.sequence_parallel == 1
            else [
                f"sequence parallel {self.sequence_parallel}: "
                f"{-(-self.tokens_per_sample // self.sequence_parallel)} image tokens per rank, "
                f"all-to-all buffers {self.all_to_all_gb:.2f} GB"
            ]
        )
        return [
            f"train-dit plan per rank ({self.world} rank(s), ZeRO-{self.zero_stage}, "
            f"{self.precision}, {limit})",
            *sp,
            f"params {self.params / 1e9:.3f} B ({self.trainable_params / 1e9:.3f} B trainable), "
            f"{self.tokens_per_sample} tokens/sample, batch {self.batch_size}"
            + (f" (largest bucket {self.bucket})" if self.bucket else ""),
            f"weights {self.weights_gb:.2f} GB, grads {self.grads_gb:.2f} GB, "
            f"AdamW {self.optimizer_gb:.2f} GB, EMA {self.ema_gb:.2f} GB",
            "model states by ZeRO stage: "
            + ", ".join(f"{k} {v:.2f} GB" for k, v in self.by_zero_stage_gb.items()),
            f"activations {self.activations_gb:.2f} GB, checkpointed "
            f"{self.activations_checkpointed_gb:.2f} GB -> checkpointing "
            f"{'on' if self.grad_checkpointing else 'off'}",
            f"peak {self.peak_gb:.2f} GB: " + ("fits" if self.fits else "does not fit"),
            *(f"note: {n}" for n in self.notes),
        ]


def model_state_bytes(
    params: int, trainable: int, zero_stage: int, world: int, weight_bytes: int = 4
) -> dict[str, float]:
    """Per-rank bytes of weights, gradients and AdamW states (ZeRO paper, Rajbhandari et al. §3).

    Weights stay in `weight_bytes` (fp32: the launcher runs bf16 through autocast, so they are
    also the master copy); gradients have the weights' size; AdamW keeps two fp32 moments.
    ZeRO-1 partitions the optimizer states over ranks, ZeRO-2 also the gradients, ZeRO-3 also
    the weights. Frozen parameters (LoRA) have weights only.
    """
    weights = params * weight_bytes
    grads = trainable * weight_bytes
    optimizer = trainable * 8
    return {
        "weights": weights / (world if zero_stage >= 3 else 1),
        "grads": grads / (world if zero_stage >= 2 else 1),
        "optimizer": optimizer / (world if zero_stage >= 1 else 1),
    }


def ema_bytes(trainable: int, zero_stage: int, world: int, offload_params: bool = False) -> float:
    """Per-rank device bytes of the EMA: fp32 copies of the trainable parameters, kept like the
    weights they average (`train.ema`).

    Up to ZeRO-2 every rank holds whole weights, so the whole EMA; under ZeRO-3 a rank averages
    its partition only (1/world: DeepSpeed pads each tensor by < world elements to split it
    evenly, ignored here as in the weights), in CPU memory with `offload_params`, where that
    partition lives.
    """
    if zero_stage < 3:
        return trainable * 4.0
    return 0.0 if offload_params else trainable * 4.0 / world


def plan_train(
    recipe: Recipe,
    latent: tuple[int, int, int, int],
    gpu_memory_gb: float | None,
    world: int | None = None,
    trainable_params: int | None = None,
) -> TrainPlan:
    """The per-rank training plan for a DiT on latents (C, T, H, W).

    With `[data] buckets` the step planned for is the bucket with the most batch x tokens (only
    C of `latent` is used). trainable_params: parameters that get gradients and optimizer states
    (None = all; the LoRA mode passes its adapter count here).
    """
    launcher, train = recipe.launcher, recipe.train
    world = world or launcher.nproc
    dit = meta_dit(recipe.dit, latent[0], recipe.text)
    params = param_count(dit)
    if trainable_params is None and recipe.lora.rank:  # LoRA: only the adapters train
        from vidcli.train.lora import trainable_parameter_count

        trainable_params = trainable_parameter_count(dit, recipe.lora)
        params += trainable_params  # the adapters are weights of their own
    trainable = params if trainable_params is None else trainable_params
    text_tokens, _, _ = text_widths(recipe.text)
    states = model_state_bytes(params, trainable, launcher.zero_stage, world)
    if launcher.offload_optimizer:
        states["optimizer"] = 0.0
    if launcher.offload_params and launcher.zero_stage == 3:
        states["weights"] = 0.0
    by_stage = {
        f"zero{s}": sum(model_state_bytes(params, trainable, s, world).values()) / GB
        for s in range(4)
    }

    ema_gb = 0.0
    if train.ema_decay > 0:  # beside the model states
        ema_gb = ema_bytes(trainable, launcher.zero_stage, world, launcher.offload_params) / GB
    bucket, latent, batch = largest_step(recipe, latent, text_tokens, dit.config.patch_size)
    act_dtype = torch.bfloat16 if launcher.precision == "bf16" else torch.float32
    full, checkpointed = _train_activations(dit, batch, latent, text_tokens, act_dtype)
    sp = launcher.sequence_parallel
    p = dit.config.patch_size
    image_tokens = latent[1] * (latent[2] // p) * (latent[3] // p)
    all_to_all_gb = 0.0
    if sp > 1:  # a rank holds its token share of the activations, plus one attention's exchange
        elements = exchange_elements(batch, image_tokens, text_tokens, dit.config.hidden_size, sp)
        all_to_all_gb = elements * act_dtype.itemsize / GB
        share = token_share(image_tokens, text_tokens, sp)
        full, checkpointed = full * share + all_to_all_gb, checkpointed * share + all_to_all_gb
    model_gb = sum(states.values()) / GB + ema_gb
    budget = None if gpu_memory_gb is None else gpu_memory_gb - RESERVED_GB
    wants_ckpt = recipe.dit.grad_checkpointing
    if budget is not None and model_gb + full > budget:
        wants_ckpt = True
    peak = model_gb + (checkpointed if wants_ckpt else full)
    notes = []
    fits = budget is None or peak <= budget
    if not fits:
        notes.insert(0, _refusal(recipe, gpu_memory_gb, peak - budget, ema_gb))
    if trainable_params is None:
        notes.append("all parameters trainable (LoRA counts come from the [lora] section)")
    return TrainPlan(
        world=world,
        zero_stage=launcher.zero_stage,
        precision=launcher.precision,
        params=params,
        trainable_params=trainable,
        tokens_per_sample=image_tokens,
        batch_size=batch,
        weights_gb=states["weights"] / GB,
        grads_gb=states["grads"] / GB,
        optimizer_gb=states["optimizer"] / GB,
        ema_gb=ema_gb,
        bucket=bucket,
        activations_gb=full,
        activations_checkpointed_gb=checkpointed,
        by_zero_stage_gb=by_stage,
        grad_checkpointing=wants_ckpt,
        gpu_memory_gb=gpu_memory_gb,
        peak_gb=peak + RESERVED_GB,
        fits=fits,
        notes=notes,
        sequence_parallel=sp,
        all_to_all_gb=all_to_all_gb,
    )


def largest_step(recipe: Recipe, latent, text_tokens: int, patch: int):
    """(bucket id or None, latent (C, T, H, W), batch) of the step with the most activations.

    Activations grow with batch x (image + text tokens), so that product picks the bucket;
    without `[data] buckets` every step is `latent` at `[train] batch_size`.
    """
    from vidcli.data.section import bucket_config

    buckets = bucket_config(recipe.data)
    if buckets is None:
        return None, tuple(latent), recipe.train.batch_size
    ae = meta_autoencoder(recipe.ae)

    def step(bucket: str):
        shape = (latent[0], *ae.latent_shape(*buckets.shape(bucket))[1:])
        tokens = shape[1] * (shape[2] // patch) * (shape[3] // patch)
        return buckets.batch_size(bucket) * (tokens + text_tokens), bucket, shape

    _, bucket, shape = max(step(b) for b in buckets.bucket_ids())
    return bucket, shape, buckets.batch_size(bucket)


def _refusal(recipe: Recipe, gpu_gb: float, over: float, ema_gb: float) -> str:
    """The one line a training plan that does not fit leads its notes with."""
    launcher = recipe.launcher
    if ema_gb >= over:
        fix = f"set [train] ema_decay = 0 (the EMA shadow takes {ema_gb:.1f} GB)"
    elif not launcher.offload_optimizer:
        fix = "set [launcher] offload_optimizer = true, or shard over more ranks"
    else:
        fix = "shard over more ranks (launcher.nproc) or train a smaller bucket / batch"
    return f"does not fit in {gpu_gb:g} GB by {over:.2f} GB even with checkpointing: {fix}"


def _train_activations(dit, batch: int, latent, text_tokens: int, dtype) -> tuple[float, float]:
    """(GB saved for backward without checkpointing, GB with every block checkpointed).

    Without checkpointing every block keeps what autograd saves (measured on one double and one
    single block, times their counts); checkpointed, each block keeps only its inputs and one
    block at a time is recomputed in backward. Either way backward through a block also holds
    the gradients of its activations, about what the block saved: one largest block more.
    """
    dit.to(dtype).requires_grad_(True)
    inputs = dit_inputs(dit, batch, latent, text_tokens, dtype)
    rest = outside_blocks(dit).requires_grad_(True)
    outside = saved_for_backward(lambda: rest(**inputs), rest)
    x, ctx, vec, cos, sin = stream_tensors(dit, batch, latent, text_tokens, dtype)
    blocks, kept, largest = 0, 0, 0
    if len(dit.double_blocks):
        one = saved_for_backward(lambda: dit.double_blocks[0](x, ctx, vec, cos, sin), dit)
        blocks += len(dit.double_blocks) * one
        kept += len(dit.double_blocks) * (x.nbytes + ctx.nbytes)
        largest = max(largest, one)
    if len(dit.single_blocks):
        h = torch.cat((ctx, x), dim=1)
        one = saved_for_backward(lambda: dit.single_blocks[0](h, vec, cos, sin), dit)
        blocks += len(dit.single_blocks) * one
        kept += len(dit.single_blocks) * h.nbytes
        largest = max(largest, one)
    full = outside + blocks + largest
    checkpointed = outside + kept + 2 * largest
    return full * ACTIVATION_MARGIN / GB, checkpointed * ACTIVATION_MARGIN / GB


def train_plan(recipe: Recipe, gpu_memory_gb: float | None) -> TrainPlan | LeastSquaresPlan:
    """`vidcli train-dit --plan`: latent shape from `[ae]` and `[data]`, device memory from
    `--gpu-memory` or the local CUDA device. The closed-form AE-Adapt stage takes no optimizer
    step: its own plan (`plans.adapt`)."""
    from vidcli.devices import resolve_device

    memory = device_memory_gb(resolve_device(None), gpu_memory_gb)
    if recipe.adapt.source and recipe.adapt.stage == "least_squares":
        return least_squares_plan(recipe, memory)
    data = recipe.data
    latent = meta_autoencoder(recipe.ae).latent_shape(data.num_frames, data.height, data.width)
    return plan_train(recipe, latent, memory)
