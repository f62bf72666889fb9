"""Starts a training stage on the DeepSpeed ZeRO engine, in one process or many.

- Started under `torchrun` / `deepspeed` (RANK and WORLD_SIZE set): join that process group.
- `--nproc N` (N > 1): re-launch this stage under `torch.distributed.run` with N local ranks.
- `--hostfile F`: re-launch under DeepSpeed's multi-node launcher. The hostfile's slots set the
  ranks per node (`--nproc` is refused beside it), and the output folder must be on storage that
  every node mounts at the same path: the resolved recipe the ranks read, the result they report,
  checkpoints and metrics all live there.
- Otherwise: a single rank in this process.

Before any of this, `prepare_output` protects the output folder: a fresh run never starts over
another run's metrics and checkpoints unless asked to (`--overwrite`) or told to continue it
(`--resume`).

The launcher only launches: it is handed the stage's function and name (`stages.py` maps names
to functions), and the step loop (`loop.py`) receives a ready engine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vidcli.console import DEBUG_ENV, log
from vidcli.errors import StageFailed, UsageError
from vidcli.launch import (
    default_single_rank_env,
    init_process_group,
    inside_distributed_job,
    run_ranks,
    torchrun_command,
)
from vidcli.recipe import LauncherSection, Recipe, TrainSection, write_resolved_recipe
from vidcli.train import checkpoint as ckpt

__all__ = ["init_process_group", "launch", "make_engine", "prepare_output", "run_worker"]

StageRun = Callable[..., Any]
"""A stage's entry point: run(recipe, resume=...) -> its TrainResult, on every rank."""


def launch(
    stage: str,
    run: StageRun,
    recipe: Recipe,
    recipe_path: Path,
    resume: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Run stage `stage` with a validated recipe; returns the stage's TrainResult.

    `run` runs it in this process; spawned ranks look the stage up by its name (`stages.py`).
    """
    launcher = recipe.launcher
    if launcher.hostfile and launcher.nproc != 1:
        raise UsageError(
            f"--nproc {launcher.nproc} with --hostfile {launcher.hostfile}: the hostfile's "
            "slots=N set the ranks per node; drop --nproc (or [launcher] nproc)"
        )
    if (
        recipe.adapt.source
        and recipe.adapt.stage == "least_squares"
        and (launcher.nproc != 1 or launcher.hostfile)
    ):
        from vidcli.train.adapt import ONE_PROCESS

        raise UsageError(ONE_PROCESS)
    prepare_output(Path(recipe.train.output), resume, overwrite)
    if inside_distributed_job() or (launcher.nproc == 1 and not launcher.hostfile):
        return run_worker(run, recipe, resume)
    return _spawn(stage, recipe, resume)


def prepare_output(output: Path, resume: str | None, overwrite: bool) -> None:
    """Refuse a fresh run into a folder that holds another run; `overwrite` clears that run.

    A run is there once it logged a metric or published a checkpoint. Starting over it would
    drop its metrics and, as its checkpoints have higher step numbers, prune the new ones.
    """
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other: choose one")
    metrics, checkpoints = output / "metrics.jsonl", output / "checkpoints"
    holds_run = metrics.exists() or bool(ckpt.complete_checkpoints(checkpoints))
    if not holds_run or resume:
        return
    if not overwrite:
        raise UsageError(
            f"{output} holds another run (metrics.jsonl, checkpoints/): a fresh run would "
            "replace it",
            hint="continue it with --resume, replace it with --overwrite, or pick another --output",
        )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank gets here
        log.warning(
            "--overwrite: removing the previous run's metrics and checkpoints in %s", output
        )
        metrics.unlink(missing_ok=True)
        shutil.rmtree(checkpoints, ignore_errors=True)


def run_worker(run: StageRun, recipe: Recipe, resume: str | None) -> Any:
    """This process is one rank: set up the process group and run the stage's loop."""
    default_single_rank_env()
    return run(recipe, resume=resume)


def make_engine(
    model: torch.nn.Module,
    train: TrainSection,
    launcher: LauncherSection,
    lr_lambda: Any,
) -> Any:
    """A DeepSpeed engine for `model`: AdamW, ZeRO stage, offload, clipping, accumulation."""
    import deepspeed

    zero: dict[str, Any] = {"stage": launcher.zero_stage}
    if launcher.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if launcher.offload_params:
        if launcher.zero_stage != 3:
            raise UsageError(
                f"[launcher] offload_params = true needs zero_stage = 3 (got {launcher.zero_stage})"
            )
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": launcher.grad_accum,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": list(train.betas),
                "eps": train.eps,
                "weight_decay": train.weight_decay,
            },
        },
        # Master weights stay fp32; bf16 runs through autocast in the loop on CPU and CUDA alike.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=trainable,
        config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda),
    )
    return engine


def _spawn(stage: str, recipe: Recipe, resume: str | None) -> Any:
    """Re-launch under torch.distributed.run (local ranks) or deepspeed (hostfile)."""
    launcher = recipe.launcher
    # In the output folder, not /tmp: with a hostfile, remote ranks read the recipe and rank 0
    # writes the result there, so it must be storage every node shares.
    output = Path(recipe.train.output)
    output.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".launch-", dir=output))
    try:
        recipe_file = write_resolved_recipe(recipe, workdir)
        result_file = workdir / "result.json"
        worker_args = ["--stage", stage, "--recipe", str(recipe_file), "--result", str(result_file)]
        if resume:
            worker_args += ["--resume", resume]
        if launcher.hostfile:
            if shutil.which("deepspeed") is None:
                raise UsageError("--hostfile needs the `deepspeed` launcher on PATH")
            command = ["deepspeed", "--hostfile", launcher.hostfile]
            command += ["--master_port", str(launcher.master_port), "--module"]
            command += ["vidcli.train.worker", *worker_args]
        else:
            command = torchrun_command("vidcli.train.worker", worker_args, launcher.nproc)
        returncode = run_ranks(command, launcher.nproc)
        if returncode != 0:
            if result_file.is_file():  # a rank reported a user error before failing
                raise _error_from_result(json.loads(result_file.read_text()))
            raise StageFailed(
                f"train-{stage} failed on one of its ranks "
                f"(exit {returncode}); see the rank logs above",
                hint=f"run again with --debug (sets {DEBUG_ENV}=1 on every rank)",
            )
        return _result_from_json(stage, json.loads(result_file.read_text()))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _error_from_result(payload: dict[str, Any]) -> Exception:
    err = (
        UsageError(payload["error"])
        if payload.get("exit_code") == 2
        else StageFailed(payload["error"])
    )
    return err


def _result_from_json(stage: str, payload: dict[str, Any]) -> Any:
    from vidcli.train.loop import TrainResult

    return TrainResult(**payload)
