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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vidcli import devices
from vidcli.console import log, progress_bar
from vidcli.errors import StageFailed, UsageError
from vidcli.fileio import atomic_write_text
from vidcli.recipe import LauncherSection, Recipe, TrainSection, dump_recipe, write_resolved_recipe
from vidcli.train import checkpoint as ckpt
from vidcli.train import seeds
from vidcli.train.ema import EMA

LossFn = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]

CHECKPOINT_TIMEOUT = timedelta(hours=2)
"""How long ranks wait for one another around checkpoint I/O: rank 0 writing (or, on resume,
hashing) hundreds of GB takes far longer than NCCL's watchdog allows a collective."""


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
    save_weights: Callable[..., None]
    """(state dict, folder, file stem, written=digests) -> writes `<stem>.safetensors` (+ config)
    loadable alone; a stage that hashes while writing records the files in `written`."""
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


@dataclass
class CheckpointRun:
    """What every checkpoint of one run shares."""

    checkpoints: Path
    rank: int
    run_id: str
    """Unique to this launch (the same on every rank): checkpoint ids are `<run_id>-<step>`."""
    resumed_from: Path | None
    """The checkpoint this run started from: pruning never removes it."""
    group: Any = None
    """A gloo process group with `CHECKPOINT_TIMEOUT` for the waits around checkpoint I/O
    (None: a single rank)."""


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


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on the engine's device (the weights stay fp32: they are the master copy)."""
    return devices.autocast(device, torch.bfloat16 if precision == "bf16" else torch.float32)


def train(
    spec: StageSpec,
    recipe: Recipe,
    engine: Any,
    rank: int,
    world: int,
    resume: str | None,
) -> TrainResult:
    """Run the loop to `recipe.train.max_steps`; rank 0 logs and returns the result.

    The output folder was checked by the launcher (`launcher.prepare_output`): a fresh run only
    starts in a folder that holds no other run, or one the user asked to overwrite.
    """
    train_cfg = recipe.train
    output = Path(train_cfg.output)
    checkpoints = output / "checkpoints"
    ema = EMA(spec.model, train_cfg.ema_decay) if train_cfg.ema_decay > 0 else None
    run = CheckpointRun(checkpoints, rank, "", None, _checkpoint_group())
    state = _resume(spec, engine, ema, resume, run)
    metrics_file = output / "metrics.jsonl"
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        write_resolved_recipe(recipe, output)
        # Lines past the checkpoint (or every line, on a fresh start) will be logged again.
        truncate_metrics(metrics_file, state.step)

    meter = _Meter(spec, engine, world)
    start_step = state.step
    with progress_bar() as bar:
        task = bar.add_task(f"train-{spec.name}", total=train_cfg.max_steps, status="")
        bar.update(task, completed=state.step)
        while state.step < train_cfg.max_steps:
            step_loss, extras, local_samples = _train_step(spec, recipe, engine, state.step, rank)
            # The ranks of a sequence-parallel group read the same samples: count them once.
            samples = _sum_over_ranks(local_samples, engine.device)
            samples //= recipe.launcher.sequence_parallel
            meter.count(samples)
            _count_step(spec, train_cfg, state, step_loss)
            if step_loss is not None:
                meter.add(step_loss, extras)
                if ema is not None:
                    ema.update(spec.model)
            state.step += 1
            state.samples_seen += samples
            at_end = state.step == train_cfg.max_steps
            if state.step % train_cfg.log_every == 0 or at_end:
                record = meter.flush(state)
                if rank == 0:
                    _append_line(metrics_file, json.dumps(record))
                bar.update(task, status=f"loss {record['loss']:.4f} lr {record['lr']:.2e}")
            if state.step % train_cfg.ckpt_every == 0 or at_end:
                save_checkpoint(spec, recipe, engine, ema, state, run)
            bar.update(task, completed=state.step)
    return meter.result(state, start_step, output, checkpoints, run.resumed_from)


def _resume(
    spec: StageSpec,
    engine: Any,
    ema: EMA | None,
    resume: str | None,
    run: CheckpointRun,
) -> ckpt.TrainerState:
    """Engine (weights, optimizer, LR schedule), EMA and counters from one checkpoint folder.

    Sets `run.resumed_from` and `run.run_id` (the same on every rank).
    """
    run.resumed_from, run.run_id = _resolve_on_rank_0(resume, run)
    if run.resumed_from is None:
        return ckpt.TrainerState(step=0, samples_seen=0)
    engine.load_checkpoint(str(run.resumed_from), tag="deepspeed")
    for name, extra in spec.extra_engines.items():
        extra.load_checkpoint(str(run.resumed_from), tag=name)
    state = ckpt.read_state(run.resumed_from)
    if ema is not None:
        ema.load_file(run.resumed_from / "ema.safetensors")
    if run.rank == 0:
        log.info("resumed from %s at step %d", run.resumed_from, state.step)
    return state


def _resolve_on_rank_0(resume: str | None, run: CheckpointRun) -> tuple[Path | None, str]:
    """(checkpoint to resume from or None, this run's id), decided by rank 0 for every rank.

    Verifying a checkpoint hashes all of it: one rank does it, not each. When it fails, every
    rank raises the same error (a UsageError stays one, with its message and hint).
    """
    outcome: tuple[str | None, str, tuple[str, str | None, bool] | None] = (None, "", None)
    failure: Exception | None = None
    if run.rank == 0:
        try:
            folder = ckpt.resolve_resume(resume, run.checkpoints)
            outcome = (str(folder) if folder else None, uuid.uuid4().hex, None)
        except Exception as err:  # the other ranks must hear of it, not wait for it
            failure = err
            outcome = (
                None,
                "",
                (str(err), getattr(err, "hint", None), isinstance(err, UsageError)),
            )
    folder, run_id, error = _broadcast(outcome, run.group)
    if failure is not None:
        raise failure
    if error is not None:
        message, hint, usage = error
        raise UsageError(message, hint=hint) if usage else StageFailed(message, hint=hint)
    return (Path(folder) if folder else None), run_id


def _train_step(
    spec: StageSpec, recipe: Recipe, engine: Any, step: int, rank: int
) -> tuple[float | None, list[dict[str, float]], int]:
    """One optimizer step over `grad_accum` micro-batches: (mean loss or None if skipped, extras,
    samples this rank read; with `[data] buckets` a step's batch size is its bucket's).

    A non-finite loss on any rank skips the whole step, yet every micro-batch still goes through
    `engine.backward` and `engine.step`: DeepSpeed's accumulation boundaries, reductions, LR
    schedule and step counters then advance exactly as on a good step, and only the optimizer's
    update is withheld (`_update_withheld`), so no weight or optimizer moment moves.
    """
    grad_accum = recipe.launcher.grad_accum
    losses: list[float] = []
    extras: list[dict[str, float]] = []
    finite = True
    samples = 0
    for micro in range(grad_accum):
        index = step * grad_accum + micro
        # Randomness of this micro-step (noise, dropout, t) depends on (seed, rank, step) alone,
        # so resuming reproduces it without saving generator states.
        torch.manual_seed(seeds.step_seed(recipe.train.seed, rank, index, seeds.GLOBAL_RNG))
        # Batches are built on the CPU (reproducible noise, data loading); the engine's device
        # (DeepSpeed's accelerator) is where the model is.
        batch = spec.batch_at(index)
        samples += batch_samples(batch)
        batch = devices.move_to(batch, engine.device)
        with autocast_context(recipe.launcher.precision, engine.device):
            loss, extra = spec.loss(engine, batch, step)
        finite = _finite_everywhere(loss) and finite
        engine.backward(loss)
        last = micro == grad_accum - 1
        with contextlib.nullcontext() if finite or not last else _update_withheld(engine):
            engine.step()
        losses.append(loss.detach().float().item())
        extras.append(extra)
    if not finite:
        return None, [], samples
    return sum(losses) / len(losses), extras, samples


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of the batch tensor, or of the first tensor in a
    dict / list / tuple batch (every tensor of a batch leads with B); 0 if it holds none."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch
    values = values if isinstance(batch, dict | list | tuple) else ()
    tensors = (v for v in values if isinstance(v, torch.Tensor) and v.dim())
    return next((int(v.shape[0]) for v in tensors), 0)


def _sum_over_ranks(value: int, device: torch.device) -> int:
    """`value` summed over all ranks (ranks of one step may read different bucket sizes)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    total = torch.tensor([value], dtype=torch.int64, device=device)  # NCCL: a CUDA tensor
    dist.all_reduce(total)
    return int(total.item())


@contextlib.contextmanager
def _update_withheld(engine: Any) -> Iterator[None]:
    """Inside, DeepSpeed's `step` runs in full but its optimizer leaves weights and moments alone.

    DeepSpeed still reduces and then clears the gradients, steps the LR schedule and counts the
    step. With a precision whose overflow check already skipped the update (fp16/bf16 ZeRO),
    DeepSpeed leaves its LR schedule behind; it is stepped here so the schedule follows the step.
    """
    optimizer = engine.basic_optimizer
    own = vars(optimizer).get("step")  # an instance-level step, if anything set one
    optimizer.step = lambda *args, **kwargs: None  # shadows the class method for one call
    try:
        yield
    finally:
        if own is None:
            del optimizer.step
        else:
            optimizer.step = own
    if not engine.was_step_applied() and engine.lr_scheduler is not None:
        engine.lr_scheduler.step()


def _count_step(
    spec: StageSpec, train_cfg: TrainSection, state: ckpt.TrainerState, loss: float | None
) -> None:
    """Track skipped steps; too many in a row end the run."""
    if loss is not None:
        state.consecutive_bad_steps = 0
        return
    state.consecutive_bad_steps += 1
    log.warning("step %d: non-finite loss, step skipped", state.step)
    if state.consecutive_bad_steps >= train_cfg.max_bad_steps:
        raise StageFailed(
            f"train-{spec.name}: {state.consecutive_bad_steps} steps in a row with a "
            f"non-finite loss (at step {state.step}); lower [train] lr or check the data"
        )


class _Meter:
    """Losses and metrics since the last log line, and the run's throughput."""

    def __init__(self, spec: StageSpec, engine: Any, world: int):
        self.spec, self.engine, self.world = spec, engine, world
        # Samples all ranks read, counted per step: with buckets the batch size varies by step.
        self.window_samples = self.run_samples = 0
        self.losses: list[float] = []
        self.extras: list[dict[str, float]] = []
        self.last_loss = float("nan")
        self.last_logged: dict[str, float] = {}
        self.run_start = self.window_start = time.perf_counter()

    def count(self, samples: int) -> None:
        """Add one step's samples (all ranks, skipped steps too: they were computed)."""
        self.window_samples += samples
        self.run_samples += samples

    def add(self, loss: float, extras: list[dict[str, float]]) -> None:
        self.last_loss = loss
        self.losses.append(loss)
        self.extras += extras

    def flush(self, state: ckpt.TrainerState) -> dict[str, float]:
        """The log record of the window that ends at `state.step` (every rank must call it)."""
        elapsed = time.perf_counter() - self.window_start
        self.last_logged = _log_record(
            self.spec,
            self.engine,
            state,
            self.extras,
            self.losses,
            elapsed,
            self.window_samples,
            self.world,
        )
        self.losses, self.extras, self.window_samples = [], [], 0
        self.window_start = time.perf_counter()
        return self.last_logged

    def result(
        self,
        state: ckpt.TrainerState,
        start_step: int,
        output: Path,
        checkpoints: Path,
        resumed_from: Path | None,
    ) -> TrainResult:
        wall = time.perf_counter() - self.run_start
        samples = self.run_samples
        return TrainResult(
            stage=self.spec.name,
            steps=state.step,
            final_loss=self.last_loss,
            wall_time_s=wall,
            output=str(output),
            checkpoint=str(ckpt.step_dir(checkpoints, state.step)),
            samples_per_s=samples / wall if wall > 0 else 0.0,
            tokens_per_s=samples * self.spec.tokens_per_sample / wall if wall > 0 else 0.0,
            resumed_from=str(resumed_from) if resumed_from else None,
            metrics={k: v for k, v in self.last_logged.items() if k != "step"},
        )


def save_checkpoint(
    spec: StageSpec,
    recipe: Recipe,
    engine: Any,
    ema: EMA | None,
    state: ckpt.TrainerState,
    run: CheckpointRun,
) -> Path:
    """Write every rank's shards into a staging folder, then publish it atomically (rank 0).

    Each rank hashes its shards as it writes them and hands rank 0 the digests; rank 0 alone
    builds the full weights, writes the rest and the manifest, and prunes this run's lineage.
    """
    rank = run.rank
    staging = ckpt.staging_dir(run.checkpoints, state.step)
    if rank == 0:
        staging.mkdir(parents=True, exist_ok=True)
    _barrier(run.group)
    written: ckpt.Digests = {}
    with ckpt.hashing_saves(engine, staging, written):
        engine.save_checkpoint(str(staging), tag="deepspeed")
    for name, extra in spec.extra_engines.items():
        with ckpt.hashing_saves(extra, staging, written):
            extra.save_checkpoint(str(staging), tag=name)
    weights = full_state_dict(spec.model, recipe.launcher, rank)
    state.lineage.append(f"{run.run_id}-{state.step:07d}")
    for shards in _gather(written, run.group):
        written |= shards
    if rank == 0:
        spec.save_weights(weights, staging, "model", written=written)
    del weights  # the model's size in host memory: free it before the EMA's copy
    if ema is not None:
        averages = _ema_weights(ema, run)
        if rank == 0:
            spec.save_weights(averages, staging, "ema", written=written)
        del averages
    if rank == 0:
        ckpt.write_text_hashed(staging / "recipe.toml", staging, dump_recipe(recipe), written)
        ckpt.write_state(staging, state, written)
        ckpt.write_manifest(staging, written)
        ckpt.publish(
            run.checkpoints, state.step, recipe.train.keep_last, state.lineage, run.resumed_from
        )
    _barrier(run.group)
    return ckpt.step_dir(run.checkpoints, state.step)


def _ema_weights(ema: EMA, run: CheckpointRun) -> dict[str, torch.Tensor] | None:
    """The EMA's whole weights for rank 0; None on the other ranks.

    Under ZeRO-3 every rank takes part in gathering them; the ranks first meet on the checkpoint
    group, whose timeout allows for rank 0 writing the model meanwhile (NCCL's would not).
    """
    if not ema.sharded:
        return ema.state_dict() if run.rank == 0 else None
    _barrier(run.group)
    return ema.state_dict()


def full_state_dict(
    model: nn.Module, launcher: LauncherSection, rank: int
) -> dict[str, torch.Tensor] | None:
    """The whole model's fp32 weights on CPU for rank 0; None on the other ranks.

    Under ZeRO-3 gathering the shards is collective, so every rank takes part, one module's own
    parameters at a time (as DeepSpeed's consolidated 16-bit save does): gathering the whole
    model at once would hold all of it on every device. Only rank 0 copies.
    """
    if launcher.zero_stage != 3:
        if rank != 0:
            return None
        return {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    import deepspeed

    weights: dict[str, torch.Tensor] = {}
    # Every path to a module, as `state_dict` walks them (a shared module under each name).
    for prefix, module in model.named_modules(remove_duplicate=False):
        own = list(module.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(own, modifier_rank=None):
            if rank == 0:
                part: dict[str, torch.Tensor] = {}
                module._save_to_state_dict(part, f"{prefix}." if prefix else "", keep_vars=False)
                weights |= {k: v.detach().float().cpu().clone() for k, v in part.items()}
    return weights if rank == 0 else None


def _log_record(
    spec: StageSpec,
    engine: Any,
    state: ckpt.TrainerState,
    window: list[dict[str, float]],
    window_losses: list[float],
    elapsed: float,
    window_samples: int,
    world: int,
) -> dict[str, float]:
    local = [{"loss": v} for v in window_losses] + window
    means = _mean_over_ranks(local, world)
    record: dict[str, float] = {
        "step": state.step,
        "loss": means.pop("loss", float("nan")),
        "lr": float(engine.get_lr()[0]),
        "samples_per_s": window_samples / elapsed if elapsed > 0 else 0.0,
        "samples_seen": state.samples_seen,
    }
    if spec.tokens_per_sample:
        record["tokens_per_s"] = record["samples_per_s"] * spec.tokens_per_sample
    peak = devices.peak_memory_gb(engine.device)  # this rank's, since the run started (CUDA)
    if peak is not None:
        record["peak_memory_gb"] = peak
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
    # On the loss's device: NCCL reduces CUDA tensors only.
    flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag)
    return flag.item() == 0.0


def _checkpoint_group() -> Any:
    """A gloo group with `CHECKPOINT_TIMEOUT` (every rank calls this once); None on one rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return None
    return dist.new_group(backend="gloo", timeout=CHECKPOINT_TIMEOUT)


def _barrier(group: Any) -> None:
    if group is not None:
        dist.barrier(group=group)


def _broadcast(value: Any, group: Any) -> Any:
    """Rank 0's `value` on every rank (over the checkpoint group)."""
    if group is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _gather(value: Any, group: Any) -> list[Any]:
    """Every rank's `value` on rank 0 (rank order); [] on the other ranks."""
    if group is None:
        return [value]
    rank = dist.get_rank()
    parts: list[Any] = [None] * dist.get_world_size() if rank == 0 else []
    dist.gather_object(value, parts if rank == 0 else None, dst=0, group=group)
    return parts


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as f:
        f.write(line + "\n")


def truncate_metrics(metrics_file: Path, step: int) -> None:
    """Keep the log lines of steps <= `step`, atomically.

    A run killed while appending leaves a half-written last line: it is dropped, like the lines
    written after the checkpoint (they will be logged again).
    """
    if not metrics_file.is_file():
        return
    kept = []
    for line in metrics_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn tail of an interrupted append
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line)
    atomic_write_text(metrics_file, "".join(f"{line}\n" for line in kept))
