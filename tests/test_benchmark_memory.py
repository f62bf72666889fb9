"""compare-ae memory: per-row gradient checkpointing from the memory plan, and the rows taking
turns on a device too small for all of them (decided with fake memory sizes on the CPU)."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from vidcli.benchmark import row_memory
from vidcli.benchmark.compare_ae import RowBench, parse_ae_spec, pixel_alignment, row_tokens
from vidcli.benchmark.options import BenchmarkOptions, resolve_settings
from vidcli.benchmark.row_memory import RowMemory, plan_rows
from vidcli.cli import app
from vidcli.errors import UsageError
from vidcli.plans import RESERVED_GB, plan_train
from vidcli.recipe import DiTSection, Recipe, TextSection

# The CUDA defaults' scale (GB): a 4x8x8 baseline at ~74k tokens and the Video DC-AE row.
BASE = RowMemory("hunyuan-video-vae:2", states_gb=10.0, activations_gb=70.0, checkpointed_gb=17.5)
HCAE = RowMemory("dc-ae-f32t4c128:1", states_gb=10.0, activations_gb=17.0, checkpointed_gb=4.5)
TINY = ["--dit", "mmdit-tiny", "--resolution", "64", "--frames", "8", "--repeat", "1"]
TINY_AES = ["dc-ae-tiny:2", "dc-ae-tiny:1"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cuda_rows_without_a_memory_limit_keep_the_mode():
    assert plan_rows([BASE, HCAE], None, "auto", "cuda").grad_checkpointing == (False, False)
    layout = plan_rows([BASE, HCAE], None, "on", "cuda")
    assert layout.grad_checkpointing == (True, True) and not layout.swap
    assert layout.peaks_gb == (27.5, 14.5)


def test_cuda_rows_share_the_device_when_their_peaks_fit_together():
    # 80 + 27 GB + one reserved GB per row process = 109 GB.
    layout = plan_rows([BASE, HCAE], 109.0, "auto", "cuda")
    assert layout.grad_checkpointing == (False, False) and not layout.swap
    assert layout.peaks_gb == (80.0, 27.0)


def test_cuda_rows_take_turns_when_only_each_alone_fits():
    # An H200's free memory: each step fits alone, both together do not.
    layout = plan_rows([BASE, HCAE], 100.0, "auto", "cuda")
    assert layout.grad_checkpointing == (False, False) and layout.swap


def test_cuda_auto_checkpoints_only_the_row_that_does_not_fit():
    # An 80 GB card with the baseline's activations over it: that row alone checkpoints.
    layout = plan_rows([BASE, HCAE], 79.0, "auto", "cuda")
    assert layout.grad_checkpointing == (True, False)
    assert layout.peaks_gb == (27.5, 27.0) and not layout.swap  # 54.5 <= 79 - 2 reserved
    small = plan_rows([BASE, HCAE], 40.0, "auto", "cuda")
    assert small.grad_checkpointing == (True, False) and small.swap


def test_forced_modes_and_rows_that_cannot_fit_are_refused_with_the_memory_needed():
    with pytest.raises(UsageError, match=r"hunyuan-video-vae:2: .*needs about 82\.0 GB without"):
        plan_rows([BASE, HCAE], 79.0, "off", "cuda")
    with pytest.raises(UsageError, match=r"needs about 29\.5 GB with gradient checkpointing"):
        plan_rows([BASE, HCAE], 20.0, "auto", "cuda")
    assert plan_rows([BASE, HCAE], 200.0, "on", "cuda").grad_checkpointing == (True, True)
    with pytest.raises(UsageError, match="--grad-checkpointing 'maybe'"):
        plan_rows([BASE], 200.0, "maybe", "cuda")


def test_cpu_rows_never_swap_and_count_the_other_rows_states():
    # On the CPU the other row's 10 GB of states stay beside each step.
    assert plan_rows([BASE, HCAE], 92.0, "auto", "cpu").grad_checkpointing == (False, False)
    layout = plan_rows([BASE, HCAE], 91.0, "auto", "cpu")  # 10 + 80 > 91 - 2
    assert layout.grad_checkpointing == (True, False) and not layout.swap


def test_row_memory_counts_the_row_dits_states_in_its_dtype_and_plans_activations():
    specs = [parse_ae_spec(a) for a in TINY_AES]
    options = BenchmarkOptions(compare_ae=True, dit="mmdit-tiny", resolution=64, frames=8)
    s = resolve_settings(options, pixel_alignment(specs))
    needs = [row_memory.row_memory(p.label, s.dit, {}, row_tokens(p, s)[0], s) for p in specs]
    for spec, need in zip(specs, needs, strict=True):
        row = RowBench(dataclasses.asdict(spec), dataclasses.asdict(s))
        params = sum(p.numel() for p in row.model.parameters())
        # fp32 weights, gradients and two AdamW moments.
        assert need.states_gb == pytest.approx(params * 4 * 4 / 1e9)
        latent, _ = row_tokens(spec, s)
        depth = row.model.config
        recipe = Recipe(
            dit=DiTSection(
                preset="mmdit-tiny",
                patch_size=spec.patch,
                overrides=dict(
                    in_channels=latent[0] * spec.patch**2,
                    context_in_dim=depth.context_in_dim,
                    vec_in_dim=depth.vec_in_dim,
                ),
            ),
            text=TextSection(max_length=s.text_tokens),
        )
        plan = plan_train(recipe, latent, None)
        assert plan.params == params  # the plan sized the very DiT the row trains
        assert need.activations_gb == plan.activations_gb
        assert need.checkpointed_gb == plan.activations_checkpointed_gb < need.activations_gb
    assert needs[1].activations_gb > needs[0].activations_gb  # patch 1: 4x the tokens


def test_move_optimizer_moves_moments_but_keeps_the_step_count_on_cpu():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    row_memory.move_optimizer(optimizer, torch.device("meta"))
    for state in optimizer.state.values():
        assert state["exp_avg"].device.type == state["exp_avg_sq"].device.type == "meta"
        assert state["step"].device.type == "cpu" and state["step"].item() == 1


def _tiny_row(mode: str, checkpointing: bool = False) -> RowBench:
    specs = [parse_ae_spec(TINY_AES[1])]
    options = BenchmarkOptions(
        compare_ae=True, dit="mmdit-tiny", resolution=64, frames=8, grad_checkpointing=mode
    )
    s = resolve_settings(options, pixel_alignment(specs))
    return RowBench(dataclasses.asdict(specs[0]), dataclasses.asdict(s), checkpointing)


def _fail_once(row: RowBench) -> None:
    forward, calls = row.model.forward, []

    def flaky(**kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return forward(**kwargs)

    row.model.forward = flaky


def test_a_row_out_of_memory_under_auto_checkpoints_and_steps_once():
    row = _tiny_row("auto")
    assert (row.model.ckpt_double, row.model.ckpt_single) == (0, 0)
    _fail_once(row)
    assert row.train() > 0
    blocks = (len(row.model.double_blocks), len(row.model.single_blocks))
    assert (row.model.ckpt_double, row.model.ckpt_single) == blocks
    steps = {s["step"].item() for s in row.optimizer.state.values()}
    assert steps == {1}  # the failed step updated nothing
    assert row.finish_train()["grad_checkpointing"] is True


def test_a_row_out_of_memory_with_checkpointing_forced_off_fails():
    row = _tiny_row("off")
    _fail_once(row)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        row.train()


def test_checkpointing_is_recorded_per_row_and_the_table_says_when_rows_differ(monkeypatch):
    specs = [parse_ae_spec(a) for a in TINY_AES]
    options = BenchmarkOptions(compare_ae=True, dit="mmdit-tiny", resolution=64, frames=8)
    s = resolve_settings(options, pixel_alignment(specs))
    needs = [row_memory.row_memory(p.label, s.dit, {}, row_tokens(p, s)[0], s) for p in specs]
    states = sum(n.states_gb for n in needs)
    assert needs[1].activations_gb > max(needs[0].activations_gb, needs[1].checkpointed_gb)
    # Free memory between the two rows' un-checkpointed needs: only row 1 checkpoints.
    free = 2 * RESERVED_GB + states + (needs[1].activations_gb + needs[0].activations_gb) / 2
    monkeypatch.setattr(row_memory, "free_memory_gb", lambda device: free)
    args = ["benchmark", "--compare-ae", *(f"--ae={a}" for a in TINY_AES), *TINY, "--steps", "2"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["grad_checkpointing"] for r in data["rows"]] == [False, True]
    assert data["env"]["grad_checkpointing"] == "auto" and data["env"]["memory_gb"] == free
    assert data["env"]["row_placement"].startswith("resident")
    assert "train steps differ: dc-ae-tiny:1 checkpointed every block" in result.stderr


def test_bad_grad_checkpointing_option_is_a_usage_error():
    args = ["benchmark", "--compare-ae", *TINY, "--grad-checkpointing", "maybe"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--grad-checkpointing 'maybe': expected one of auto, on, off" in result.output


def test_a_swapping_row_holds_the_device_only_during_its_own_calls(monkeypatch):
    """With swap, each train/infer call moves the DiT (and AdamW state) in, then back to CPU
    memory with the cache emptied, also when the call fails; a fake device name records it."""
    row = _tiny_row("on", checkpointing=True)
    row.swap = True
    events = []
    to = row.model.to
    monkeypatch.setattr(row.model, "to", lambda d: events.append(("to", str(d))) or to(d))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append(("empty_cache",)))
    monkeypatch.setattr(
        row_memory, "move_optimizer", lambda opt, d: events.append(("optimizer", str(d)))
    )
    row.device = torch.device("cpu", 0)  # stands for cuda:0 in the record
    row.train()
    in_and_out = [("to", "cpu:0"), ("optimizer", "cpu:0"), ("to", "cpu"), ("optimizer", "cpu")]
    assert events == [*in_and_out, ("empty_cache",)]
    events.clear()
    row.finish_train()  # frees the optimizer (and casts the DiT): inference moves the DiT only
    events.clear()
    row.infer()
    assert events == [("to", "cpu:0"), ("to", "cpu"), ("empty_cache",)]
    events.clear()
    _fail_once(row)
    row.optimizer = torch.optim.AdamW(row.model.parameters())
    with pytest.raises(torch.cuda.OutOfMemoryError):  # checkpointing already on: no retry
        row.train()
    assert events[-3:] == [("to", "cpu"), ("optimizer", "cpu"), ("empty_cache",)]
