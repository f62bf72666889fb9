"""Memory of the compare-ae rows: whether each row's DiT step checkpoints its blocks, and whether
the rows can all stay on the device while they are timed interleaved.

Each row's needs come from the training memory plan (`vidcli.plans.plan_train`: activations
measured on `meta` with and without per-block checkpointing) and its model states (fp32 master
weights, gradients and AdamW moments, as train-dit keeps them). The decision is pure
(`plan_rows`), so it is tested with fake memory sizes.

On CUDA every row is a process of its own, and a process keeps what its step allocated in its
caching allocator: two resident rows need the sum of their peaks. When that does not fit, the
rows `swap`: each row moves its DiT and AdamW state to the GPU for its own call and back to CPU
memory (emptying its cache) before the next row runs, so each timed step has the device alone.
On the CPU the rows' models all stay in memory (there is nowhere to move them) and a step's
activations are returned to the system when it ends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vidcli.benchmark.options import GRAD_CHECKPOINTING
from vidcli.errors import UsageError
from vidcli.plans import GB, RESERVED_GB

log = logging.getLogger("vidcli")

ADAMW_STATES = 2
"""AdamW moments per parameter, kept in the parameter's dtype by torch.optim.AdamW."""


@dataclass(frozen=True)
class RowMemory:
    """What one row's DiT train step holds, in GB (1e9 bytes)."""

    label: str
    states_gb: float
    """Weights, gradients and the AdamW moments."""
    activations_gb: float
    """Saved for backward without checkpointing."""
    checkpointed_gb: float
    """Saved for backward with every block checkpointed."""

    def peak_gb(self, checkpointing: bool) -> float:
        return self.states_gb + (self.checkpointed_gb if checkpointing else self.activations_gb)


@dataclass(frozen=True)
class RowLayout:
    """All rows: checkpointing per row, and whether the rows take turns on the device."""

    grad_checkpointing: tuple[bool, ...]
    swap: bool
    """True: only the row being timed has its DiT and optimizer on the device."""
    peaks_gb: tuple[float, ...]
    """Estimated peak of each row's train step with its checkpointing choice."""
    memory_gb: float | None
    """Memory the rows share (None: no limit known)."""


def plan_rows(
    rows: list[RowMemory], memory_gb: float | None, mode: str, device_type: str
) -> RowLayout:
    """Checkpointing and placement of the rows on `memory_gb` (free device memory, or available
    system memory on the CPU; None = no limit).

    mode 'on'/'off' forces checkpointing for every row; 'auto' turns it on for a row whose step
    would not fit without it. On CUDA a row can have the device to itself (swap), so only its own
    peak counts; on the CPU the other rows' model states stay in memory beside it. UsageError,
    naming the memory needed, when a row does not fit with the chosen checkpointing.
    """
    if mode not in GRAD_CHECKPOINTING:
        raise UsageError(
            f"--grad-checkpointing {mode!r}: expected one of {', '.join(GRAD_CHECKPOINTING)}"
        )
    if memory_gb is None:
        ckpt = tuple(mode == "on" for _ in rows)
        peaks = tuple(r.peak_gb(c) for r, c in zip(rows, ckpt, strict=True))
        return RowLayout(ckpt, False, peaks, None)
    cuda = device_type == "cuda"
    # Every process keeps RESERVED_GB for its own context and workspaces.
    budget = memory_gb - RESERVED_GB * len(rows)
    all_states = sum(r.states_gb for r in rows)
    choices, peaks = [], []
    for row in rows:
        beside = 0.0 if cuda else all_states - row.states_gb
        ckpt = mode == "on" or (mode == "auto" and beside + row.peak_gb(False) > budget)
        need = beside + row.peak_gb(ckpt)
        if need > budget:
            how = "with" if ckpt else "without"
            raise UsageError(
                f"compare-ae row {row.label}: its train step needs about "
                f"{need + RESERVED_GB * len(rows):.1f} GB {how} gradient checkpointing "
                f"(model states {row.states_gb:.1f} GB), {memory_gb:.1f} GB is free",
                hint="use --grad-checkpointing auto, a smaller --resolution/--frames, or fewer "
                "--dit-blocks",
            )
        choices.append(ckpt)
        peaks.append(row.peak_gb(ckpt))
    swap = cuda and sum(peaks) > budget
    return RowLayout(tuple(choices), swap, tuple(peaks), memory_gb)


def row_memory(label: str, dit: str, depth: dict[str, int], latent, s) -> RowMemory:
    """A row's needs from `plan_train`: the DiT preset `dit` with `depth` overrides on latents
    (C, T', H', W') at the patch of `label` ('PRESET:PATCH'), `s` the benchmark Settings.

    The row trains as train-dit does (fp32 master weights, gradients and AdamW moments; `--dtype`
    autocast, which the plan's activations follow), without ZeRO: its states are counted here.
    """
    from vidcli.models.mmdit import resolve_config
    from vidcli.plans import plan_train
    from vidcli.recipe import DiTSection, LauncherSection, Recipe, TextSection, TrainSection

    patch = int(label.rpartition(":")[2])
    preset = resolve_config(dit)
    overrides = dict(
        depth,
        in_channels=latent[0] * patch**2,
        context_in_dim=preset.context_in_dim,
        vec_in_dim=preset.vec_in_dim,
    )
    recipe = Recipe(
        dit=DiTSection(preset=dit, patch_size=patch, overrides=overrides),
        text=TextSection(backend="minilm", max_length=s.text_tokens),
        train=TrainSection(batch_size=s.batch_size),
        launcher=LauncherSection(zero_stage=0, precision="bf16" if s.dtype == "bf16" else "fp32"),
    )
    plan = plan_train(recipe, tuple(latent), None, world=1)
    size = torch.float32.itemsize
    states = plan.params * size * (2 + ADAMW_STATES)  # weights, gradients, moments
    return RowMemory(label, states / GB, plan.activations_gb, plan.activations_checkpointed_gb)


def plan_layout(rows: list[tuple[str, tuple[int, ...]]], s) -> RowLayout:
    """Checkpointing per row and their placement, from the memory plan of each row's DiT step.

    rows: ('PRESET:PATCH', latent (C, T', H', W')) per row; `s` the benchmark Settings.
    """
    depth = {}
    if s.dit_blocks:
        depth = dict(depth=s.dit_blocks[0], depth_single_blocks=s.dit_blocks[1])
    needs = [row_memory(label, s.dit, depth, latent, s) for label, latent in rows]
    layout = plan_rows(
        needs,
        free_memory_gb(torch.device(s.device)),
        s.grad_checkpointing,
        s.device_type,
    )
    for need, ckpt, est in zip(needs, layout.grad_checkpointing, layout.peaks_gb, strict=True):
        log.info(
            "compare-ae row %s: train step about %.2f GB (states %.2f, activations %.2f, "
            "checkpointed %.2f): checkpointing %s",
            need.label,
            est,
            need.states_gb,
            need.activations_gb,
            need.checkpointed_gb,
            "on" if ckpt else "off",
        )
    if layout.swap:
        log.info("compare-ae: the rows do not fit the device together; they take turns on it")
    return layout


def free_memory_gb(device: torch.device) -> float | None:
    """Free memory of a CUDA device; on the CPU the system's available memory (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free / GB
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GB
    except (OSError, ValueError, IndexError):
        pass
    return None


def move_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move AdamW's moments to `device`; its step counts stay where torch keeps them (CPU)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if key != "step" and isinstance(value, torch.Tensor):
                state[key] = value.to(device)
