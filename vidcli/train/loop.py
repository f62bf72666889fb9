"""The step loop shared by every trainer: resume, batch, loss, backward, step, EMA, log, save.

A stage plugs in by handing over a `StageSpec` (its model, a batch for each step, a loss and a
way to save weights); it never subclasses anything. Each step's data and randomness are pure
functions of (seed, rank, step), so a resumed run continues bit-for-bit where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vidcli.console import log, progress_bar
from vidcli.errors import StageFailed
from vidcli.recipe import LauncherSection, Recipe, TrainSection, write_resolved_recipe
from vidcli.train import checkpoint as ckpt
from vidcli.train.ema import EMA

LossFn = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class StageSpec:
    """What a stage gives the loop."""

    name: str
    model: nn.Module
    """The trainable module (frozen parts, like a DiT's AE, live outside it)."""
    batch_at: Callable[[int], Any]
    """The batch of this rank for a micro-step index (deterministic: this is the data position)."""
    loss: LossFn
    """(model, batch, step) -> (scalar loss, extra metrics to log)."""
    save_weights: Callable[[dict[str, torch.Tensor], Path, str], None]
    """(state dict, folder, file stem) -> writes `<stem>.safetensors` (+ config) loadable alone."""
    tokens_per_sample: int = 0
    """Transformer tokens per sample, for tokens/s (0 = not a token model)."""
    extra_engines: dict[str, Any] = field(default_factory=dict)
    """Other engines the loss steps itself (a GAN discriminator), checkpointed under their name."""


@dataclass
class TrainResult:
    """What `train-ae` / `train-dit` print (or return as JSON)."""

    stage: str
    steps: int
    final_loss: float
    wall_time_s: float
    output: str
    checkpoint: str
    samples_per_s: float
    tokens_per_s: float
    resumed_from: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def stdout_lines(self) -> list[str]:
        return [self.checkpoint]


def lr_multiplier(train: TrainSection) -> Callable[[int], float]:
    """Linear warm-up to 1, then constant or cosine decay to 0 at `max_steps`."""

    def factor(step: int) -> float:
        if step < train.warmup_steps:
            return (step + 1) / train.warmup_steps
        if train.lr_schedule == "cosine":
            span = max(1, train.max_steps - train.warmup_steps)
            progress = min(1.0, (step - train.warmup_steps) / span)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def autocast_context(precision: str) -> contextlib.AbstractContextManager:
    if precision != "bf16":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def train(
    spec: StageSpec,
    recipe: Recipe,
    engine: Any,
    rank: int,
    world: int,
    resume: str | None,
) -> TrainResult:
    """Run the loop to `recipe.train.max_steps`; rank 0 logs and returns the result."""
    train_cfg, launcher = recipe.train, recipe.launcher
    output = Path(train_cfg.output)
    checkpoints = output / "checkpoints"
    ema = EMA(spec.model, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None

    # Resume: engine (weights, optimizer, LR schedule), EMA and counters from one folder.
    state = ckpt.TrainerState(step=0, samples_seen=0)
    resumed_from = ckpt.resolve_resume(resume, checkpoints)
    if resumed_from is not None:
        engine.load_checkpoint(str(resumed_from), tag="deepspeed")
        for name, extra in spec.extra_engines.items():
            extra.load_checkpoint(str(resumed_from), tag=name)
        state = ckpt.read_state(resumed_from)
        if ema is not None:
            from safetensors.torch import load_file

            ema.load_state_dict(load_file(str(resumed_from / "ema.safetensors")))
        if rank == 0:
            log.info("resumed from %s at step %d", resumed_from, state.step)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        write_resolved_recipe(recipe, output)
    metrics_file = output / "metrics.jsonl"
    if rank == 0 and resumed_from is None:
        metrics_file.unlink(missing_ok=True)
    elif rank == 0:
        _truncate_metrics(metrics_file, state.step)

    samples_per_step = train_cfg.batch_size * launcher.grad_accum * world
    window: list[dict[str, float]] = []
    window_losses: list[float] = []
    window_start = time.perf_counter()
    run_start = time.perf_counter()
    start_step = state.step
    last_loss = float("nan")
    last_logged: dict[str, float] = {}
    with progress_bar() as bar:
        task = bar.add_task(f"train-{spec.name}", total=train_cfg.max_steps, status="")
        bar.update(task, completed=state.step)
        while state.step < train_cfg.max_steps:
            step = state.step
            step_losses = []
            for micro in range(launcher.grad_accum):
                index = step * launcher.grad_accum + micro
                # Randomness of this micro-step (noise, dropout, t) depends on (seed, rank, step)
                # alone, so resuming reproduces it without saving generator states.
                torch.manual_seed(_seed_for(train_cfg.seed, rank, index))
                batch = spec.batch_at(index)
                with autocast_context(launcher.precision):
                    loss, extra = spec.loss(engine, batch, step)
                if not _finite_everywhere(loss):
                    step_losses.append(float("nan"))
                    continue  # skip this micro-batch: its gradient never reaches the weights
                engine.backward(loss)
                engine.step()
                step_losses.append(loss.detach().float().item())
                window.append(extra)
            if any(math.isnan(v) for v in step_losses):
                state.consecutive_bad_steps += 1
                log.warning("step %d: non-finite loss, step skipped", step)
                if state.consecutive_bad_steps >= train_cfg.max_bad_steps:
                    raise StageFailed(
                        f"train-{spec.name}: {state.consecutive_bad_steps} steps in a row with a "
                        f"non-finite loss (at step {step}); lower [train] lr or check the data"
                    )
            else:
                state.consecutive_bad_steps = 0
                last_loss = sum(step_losses) / len(step_losses)
                window_losses.append(last_loss)
            if ema is not None:
                ema.update(spec.model)
            state.step += 1
            state.samples_seen += samples_per_step

            if state.step % train_cfg.log_every == 0 or state.step == train_cfg.max_steps:
                elapsed = time.perf_counter() - window_start
                record = _log_record(
                    spec, engine, state, window, window_losses, elapsed, samples_per_step, world
                )
                last_logged = record
                if rank == 0:
                    with metrics_file.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                window, window_losses = [], []
                window_start = time.perf_counter()
                bar.update(task, status=f"loss {record['loss']:.4f} lr {record['lr']:.2e}")
            if state.step % train_cfg.ckpt_every == 0 or state.step == train_cfg.max_steps:
                save_checkpoint(spec, recipe, engine, ema, state, checkpoints, rank)
            bar.update(task, completed=state.step)

    wall = time.perf_counter() - run_start
    steps_run = state.step - start_step
    return TrainResult(
        stage=spec.name,
        steps=state.step,
        final_loss=last_loss,
        wall_time_s=wall,
        output=str(output),
        checkpoint=str(ckpt.step_dir(checkpoints, state.step)),
        samples_per_s=steps_run * samples_per_step / wall if wall > 0 else 0.0,
        tokens_per_s=steps_run * samples_per_step * spec.tokens_per_sample / wall if wall else 0.0,
        resumed_from=str(resumed_from) if resumed_from else None,
        metrics={k: v for k, v in last_logged.items() if k not in ("step",)},
    )


def save_checkpoint(
    spec: StageSpec,
    recipe: Recipe,
    engine: Any,
    ema: EMA | None,
    state: ckpt.TrainerState,
    checkpoints: Path,
    rank: int,
) -> Path:
    """Write every rank's shards into a staging folder, then publish it atomically (rank 0)."""
    staging = ckpt.staging_dir(checkpoints, state.step)
    if rank == 0:
        staging.mkdir(parents=True, exist_ok=True)
    _barrier()
    engine.save_checkpoint(str(staging), tag="deepspeed")
    for name, extra in spec.extra_engines.items():
        extra.save_checkpoint(str(staging), tag=name)
    weights = full_state_dict(spec.model, recipe.launcher)
    if rank == 0:
        spec.save_weights(weights, staging, "model")
        if ema is not None:
            spec.save_weights(ema.state_dict(), staging, "ema")
        write_resolved_recipe(recipe, staging)
        ckpt.write_state(staging, state)
    _barrier()
    final = ckpt.step_dir(checkpoints, state.step)
    if rank == 0:
        ckpt.publish(checkpoints, state.step, recipe.train.keep_last)
    _barrier()
    return final


def full_state_dict(model: nn.Module, launcher: LauncherSection) -> dict[str, torch.Tensor]:
    """The whole model's fp32 weights on CPU (gathered from all ranks under ZeRO-3)."""
    if launcher.zero_stage == 3:
        import deepspeed

        params = list(model.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}


def _log_record(
    spec: StageSpec,
    engine: Any,
    state: ckpt.TrainerState,
    window: list[dict[str, float]],
    window_losses: list[float],
    elapsed: float,
    samples_per_step: int,
    world: int,
) -> dict[str, float]:
    steps = len(window_losses) or 1
    local = [{"loss": v} for v in window_losses] + window
    means = _mean_over_ranks(local, world)
    record: dict[str, float] = {
        "step": state.step,
        "loss": means.pop("loss", float("nan")),
        "lr": float(engine.get_lr()[0]),
        "samples_per_s": steps * samples_per_step / elapsed if elapsed > 0 else 0.0,
        "samples_seen": state.samples_seen,
    }
    if spec.tokens_per_sample:
        record["tokens_per_s"] = record["samples_per_s"] * spec.tokens_per_sample
    record.update(means)
    return record


def _mean_over_ranks(window: list[dict[str, float]], world: int) -> dict[str, float]:
    """Per-key means over every value logged on every rank (ranks may log different keys)."""
    sums: dict[str, list[float]] = {}
    for metrics in window:
        for key, value in metrics.items():
            total = sums.setdefault(key, [0.0, 0.0])
            total[0] += value
            total[1] += 1
    if world > 1 and dist.is_initialized():
        gathered: list[dict[str, list[float]]] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, sums)
        sums = {}
        for part in gathered:
            for key, (total, count) in part.items():
                merged = sums.setdefault(key, [0.0, 0.0])
                merged[0] += total
                merged[1] += count
    return {key: total / count for key, (total, count) in sorted(sums.items())}


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """All ranks agree on skipping: one rank's NaN skips the micro-step everywhere."""
    flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag)
    return flag.item() == 0.0


def _seed_for(seed: int, rank: int, index: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + index) % (2**63 - 1)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _truncate_metrics(metrics_file: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint (they will be logged again)."""
    if not metrics_file.is_file():
        return
    kept = [
        line
        for line in metrics_file.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    metrics_file.write_text("".join(f"{line}\n" for line in kept))
