"""`vidcli.compile` stacked with the other memory and training options, under inductor: int8-wo
sampling, train-dit with gradient checkpointing, on two ZeRO-2 ranks and with LoRA each give
the eager run's numbers and compile nothing after their first step; ZeRO-3 is refused.

Each pair is the same combination run eagerly and compiled (`--compile`: mode forward). The
train-dit runs are 3 steps at lr 1e-3, so steps 2 and 3 (and the saved weights) depend on the
compiled backward. Inductor compiles C++ kernels for each new graph (30-60 s on 2 cores with a
cold cache), hence the slow marks.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_cfg_dit
from tiny_runs import recipe_args, subprocess_env, tiny_dit_values

from vidcli import flow
from vidcli.compile import compile_dit, compiled_graphs

SHAPE = (1, 4, 2, 4, 4)
"""(N, C, T, H, W) latents: 16 image tokens at patch 2."""
ONE_BLOCK_EACH = ("--set", "dit.overrides={ depth = 1, depth_single_blocks = 1 }")
"""mmdit-tiny cut to one block of each class (a TOML table: recipe_args writes JSON values): half
the graph for inductor to compile."""


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def sample(model, inputs, schedule) -> torch.Tensor:
    """CFG sampling with oscillating guidance: 2 rows, then 1 on every other step from 20 %."""
    with torch.no_grad():
        return flow.sample_i2v(
            model.forward_video, **inputs, schedule=schedule,
            guidance=flow.GuidanceConfig(text=5.0),
        )  # fmt: skip


@pytest.mark.slow  # inductor compiles the int8-wo forward for 2 and 1 CFG rows, per dtype
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_int8_wo_compiled_samples_as_int8_wo_eager(dtype):
    pytest.importorskip("torchao")
    from vidcli.quantize import quantize_linears, quantizes

    model, inputs, schedule = tiny_cfg_dit(6, SHAPE)
    model = model.to(dtype)
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    unquantized = sample(model, inputs, schedule)
    quantize_linears(model, "int8-wo")  # as the pipeline: quantize, then compile
    compiled = copy.deepcopy(model)
    stats = compile_dit(compiled, "forward")
    expected = sample(model, inputs, schedule)
    # bf16: inductor turns each int8-wo linear into aten._weight_int8pack_mm, which crashed the
    # process on the tiny DiT's 8-, 12- and 20-wide inputs before int8-wo left those unquantized.
    got = sample(compiled, inputs, schedule)
    # int8 rounding moves the latents by ~1e-2 (fp32; latents of size ~3.5): the tolerance below
    # is far tighter, so a compiled graph that dropped or double-applied the scales would fail.
    assert (expected - unquantized).abs().max() > 1e-3
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 0.05}[dtype]  # bf16: ~3 ulp at 3.5
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
    assert stats().graphs == 2  # CFG's 2 rows and the unguided steps' 1
    linears = [m for m in compiled.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(type(m.weight).__name__ == "Int8Tensor" for m in linears) > len(linears) // 2
    for m in linears:
        assert (type(m.weight).__name__ == "Int8Tensor") == quantizes(m, "int8-wo")
    before = compiled_graphs()
    again = sample(compiled, inputs, schedule)
    assert compiled_graphs() == before  # no recompile after the warm-up run
    assert torch.equal(again, got)


def test_int8_wo_leaves_inputs_not_a_multiple_of_16_wide_unquantized():
    from vidcli.quantize import quantized_bytes, quantizes

    model, _, _ = tiny_cfg_dit(4, SHAPE)
    left = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    left -= {n for n, m in model.named_modules() if quantizes(m, "int8-wo")}
    # 12 text features, the 8-wide pooled vector and the condition's (4 + 1) * 2 * 2 = 20 inputs
    assert left == {"txt_in", "vector_in.in_layer", "cond_in"}, left
    # fp8 needs in and out widths % 16 (torch._scaled_mm): the same three here
    assert {n for n, m in model.named_modules() if quantizes(m, "fp8")} == {
        n for n, m in model.named_modules() if quantizes(m, "int8-wo")
    }
    quantized = [
        m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in left
    ]
    total = sum(p.numel() for p in model.parameters())
    # fp32: a quantized linear saves 3 of 4 B per weight and adds a 4 B scale + 1 B zero per row.
    saved = sum(3 * m.weight.numel() - 5 * m.out_features for m in quantized)
    assert quantized_bytes(model, "int8-wo", 4) == 4 * total - saved


def train_dit(root: Path, values: dict[str, object], *extra: str) -> subprocess.CompletedProcess:
    """A 3-step train-dit run of the tiny DiT (one checkpoint at the end) under root/run."""
    values = {
        **tiny_dit_values(root),
        "train.max_steps": 3,
        "train.log_every": 1,
        "train.ckpt_every": 3,
        "train.lr": 1e-3,
        **values,
    }
    args = ["train-dit", *recipe_args("demo-dit.toml", values), *extra, "--json"]
    return subprocess.run(
        [sys.executable, "-m", "vidcli", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(OMP_NUM_THREADS="1"),
    )


def eager_and_compiled(tmp_path: Path, values: dict[str, object], *extra: str):
    """The combination run eagerly and with --compile: per run (result, losses, {file: weights})
    of the final checkpoint's safetensors files."""
    runs = {}
    for name, flag in (("eager", ()), ("compiled", ("--compile",))):
        done = train_dit(tmp_path / name, values, *extra, *flag)
        assert done.returncode == 0, done.stderr[-3000:]
        run = tmp_path / name / "run"
        losses = [
            json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
        final = run / "checkpoints" / "step-0000003"
        files = {p.name: load_file(str(p)) for p in sorted(final.glob("*.safetensors"))}
        runs[name] = (json.loads(done.stdout), losses, files)
    return runs["eager"], runs["compiled"]


def assert_same_training(eager, compiled) -> None:
    """Losses to 1e-5 relative, every saved tensor to 1e-5 absolute (lr 1e-3 steps move weights
    by ~1e-3), one graph for forward and backward: no recompile after step 1."""
    (_, eager_losses, eager_files), (result, compiled_losses, compiled_files) = eager, compiled
    assert len(eager_losses) == 3 and eager_losses[1] != eager_losses[0]  # it trained
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert eager_files.keys() == compiled_files.keys()
    for name, tensors in eager_files.items():
        assert tensors.keys() == compiled_files[name].keys()
        for key, tensor in tensors.items():
            torch.testing.assert_close(compiled_files[name][key], tensor, rtol=0, atol=1e-5)
    assert result["metrics"]["compile_graphs"] == 1 and result["metrics"]["compile_s"] > 0


def test_the_compiled_forward_keeps_each_blocks_checkpoint():
    graphs = []

    def recording(gm: torch.fx.GraphModule, example_inputs) -> object:
        graphs.append(gm)
        return gm.forward

    model, inputs, _ = tiny_cfg_dit(4, SHAPE)  # 2 double and 2 single blocks
    model.train()
    model.set_gradient_checkpointing(True)
    compile_dit(model, "forward", backend=recording)
    t = torch.full((1,), 0.3)
    model.forward_video(inputs["noise"], t, inputs["txt"], inputs["y_vec"]).sum().backward()
    (graph,) = graphs
    regions = [
        n for n in graph.graph.nodes if n.target is torch.ops.higher_order.tag_activation_checkpoint
    ]
    # One region per block: AOT autograd recomputes them in the backward instead of saving them.
    assert len(regions) == 4


@pytest.mark.slow  # two train-dit runs, one compiling a checkpointed forward and backward
def test_train_dit_compiled_with_gradient_checkpointing(tmp_path):
    values = {"dit.grad_checkpointing": True}
    assert_same_training(*eager_and_compiled(tmp_path, values, *ONE_BLOCK_EACH))


@pytest.mark.slow  # four ranks in all: two eager, two compiling
def test_train_dit_compiled_on_two_zero2_ranks(tmp_path):
    eager, compiled = eager_and_compiled(tmp_path, {"launcher.zero_stage": 2}, "--nproc", "2")
    assert_same_training(eager, compiled)
    shards = tmp_path / "compiled" / "run" / "checkpoints" / "step-0000003" / "deepspeed"
    ranks = {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}
    assert ranks <= {p.name for p in shards.iterdir()}  # two ranks, each its optimizer shard


@pytest.mark.slow  # two train-dit runs, one compiling the PEFT-wrapped forward and backward
def test_train_dit_compiled_with_lora(tmp_path):
    eager, compiled = eager_and_compiled(tmp_path, {"lora.rank": 4}, *ONE_BLOCK_EACH)
    assert_same_training(eager, compiled)
    adapters = compiled[2]["lora.safetensors"]
    ups = [t for key, t in adapters.items() if key.endswith("lora_B.weight")]
    assert ups and all(t.abs().max() > 0 for t in ups)  # B starts at zero: the adapters trained


def test_train_dit_refuses_compile_with_zero3(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vidcli.cli import app

    # This process as the one rank (the launcher would set these in os.environ for good).
    rank = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for key, value in rank.items():
        monkeypatch.setenv(key, value)
    values = {**tiny_dit_values(tmp_path), "launcher.zero_stage": 3, "train.ema_decay": 0.0}
    args = ["train-dit", *recipe_args("demo-dit.toml", values), "--compile"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "Error: train.compile forward and launcher.zero_stage = 3 cannot be combined: ZeRO-3 "
        "gathers each layer's weights in module hooks that break the compiled graph and "
        "recompile it every step; use launcher.zero_stage <= 2 or drop --compile"
    ]
    assert not (tmp_path / "run" / "checkpoints").exists()
