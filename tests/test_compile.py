"""`vidcli.compile`: compiled DiTs give eager's numbers, compile once per block class and shape,
never per sampling step, and run eagerly where a hook or an attention plan takes over.

Recompiles are counted with dynamo's graph counter under the "eager" backend (dynamo's capture
and guards without inductor's code generation: the counts do not depend on the backend); the
inductor tests compare numbers with eager's.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from tiny_models import tiny_cfg_dit
from tiny_runs import recipe_args, subprocess_env, tiny_dit_values

from vidcli import flow
from vidcli.compile import compile_dit, compiled_graphs, compiled_mode
from vidcli.errors import UsageError
from vidcli.models.mmdit.layers import DoubleStreamBlock
from vidcli.sampling.compatibility import (
    Setting,
    check_class_conditional,
    check_sequence_parallel,
    refusals,
)
from vidcli_kernels.attention import dense_attention, use_attention_plan

SHAPE = (1, 4, 2, 4, 4)
"""(N, C, T, H, W) latents: 16 image tokens at patch 2."""


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def sample(model, inputs, schedule, guidance: float = 5.0) -> torch.Tensor:
    """CFG sampling with oscillating text guidance: 2 rows on most steps, 1 on every other one
    from 20 % of the schedule (`flow.oscillated_scale`)."""
    with torch.no_grad():
        return flow.sample_i2v(
            model.forward_video, **inputs, schedule=schedule,
            guidance=flow.GuidanceConfig(text=guidance),
        )  # fmt: skip


@pytest.mark.parametrize("mode", ["blocks", "forward"])
def test_graphs_per_shape_not_per_step(mode):
    model, inputs, schedule = tiny_cfg_dit(10, SHAPE)
    stats = compile_dit(model, mode, backend="eager")
    sample(model, inputs, schedule)
    # One graph per compiled function and row count (CFG 2, unguided 1): the forward, or the two
    # block classes, where the first double block's one-row text input is a view of the text
    # embedder's matmul and the others' are not (dynamo guards a view's base once sizes are
    # dynamic), so that block class has one more.
    assert stats().graphs == {"forward": 2, "blocks": 5}[mode]
    before = compiled_graphs()
    sample(model, inputs, schedule)
    assert compiled_graphs() == before  # a second run of 10 steps compiles nothing

    # Text lengths: the first new length makes L_txt symbolic, later lengths reuse that graph.
    graphs = []
    for text_tokens in (7, 9, 11):
        _, longer, _ = tiny_cfg_dit(10, SHAPE, text_tokens=text_tokens)
        before = compiled_graphs()
        sample(model, longer, schedule)
        graphs.append(compiled_graphs() - before)
    assert graphs[0] > 0 and graphs[1:] == [0, 0], graphs


def test_identical_blocks_share_one_graph():
    model, inputs, _ = tiny_cfg_dit(4, SHAPE, single_blocks=3)
    stats = compile_dit(model, "blocks", backend="eager")
    x = inputs["noise"]
    with torch.no_grad():
        model.forward_video(x, torch.full((1,), 0.5), inputs["txt"], inputs["y_vec"])
    # 2 double and 3 single blocks, 2 classes: one graph each.
    assert stats().graphs == 2 and compiled_mode(model) == "blocks"


@pytest.mark.slow  # inductor compiles fp32 C++ kernels for both modes (about a minute on 2 cores)
@pytest.mark.parametrize("mode", ["blocks", "forward"])
def test_inductor_matches_eager(mode):
    model, inputs, schedule = tiny_cfg_dit(6, SHAPE)
    compiled = copy.deepcopy(model)
    stats = compile_dit(compiled, mode)
    expected = sample(model, inputs, schedule)
    got = sample(compiled, inputs, schedule)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert stats().compile_s > 0 and stats().graphs >= 1


@pytest.mark.slow  # inductor compiles the forward and backward graphs
def test_inductor_gradients_match_eager():
    model, inputs, _ = tiny_cfg_dit(4, SHAPE)
    model.train()
    compiled = copy.deepcopy(model)
    compile_dit(compiled, "blocks")
    t = torch.full((1,), 0.3)
    grads = []
    for m in (model, compiled):
        m.forward_video(
            inputs["noise"], t, inputs["txt"], inputs["y_vec"]
        ).square().mean().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


class RecordingHook:
    """A caching policy's stand-in: computes like the block and records each call."""

    def __init__(self):
        self.calls = 0

    def attention(self, block, img_in, txt_in, cos, sin):
        self.calls += 1
        return block.attention(img_in, txt_in, cos, sin)

    def mlp(self, block, stream, x):
        return getattr(block, f"{stream}_mlp")(x)


def test_a_block_with_a_hook_runs_eagerly():
    model, inputs, _ = tiny_cfg_dit(4, SHAPE)
    reference = copy.deepcopy(model)
    stats = compile_dit(model, "blocks", backend="eager")
    img, img_ids, txt_ids, _ = model.pack_video(inputs["noise"], inputs["txt"])
    e = model.embed(img, img_ids, inputs["txt"], txt_ids, torch.full((1,), 0.5), inputs["y_vec"])
    hook = RecordingHook()
    block = model.double_blocks[0]
    assert isinstance(block, DoubleStreamBlock)
    with torch.no_grad():
        got = block(e.x, e.ctx, e.vec, e.cos, e.sin, hook)  # positional, as the caching runner
        expected = reference.double_blocks[0](e.x, e.ctx, e.vec, e.cos, e.sin)
    assert hook.calls == 1 and stats().graphs == 0
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", ["blocks", "forward"])
def test_an_attention_plan_runs_eagerly_and_is_used(mode):
    model, inputs, _ = tiny_cfg_dit(4, SHAPE)
    stats = compile_dit(model, mode, backend="eager")
    calls = []

    def plan(q, k, v):
        calls.append(q.shape)
        return dense_attention(q, k, v)

    with torch.no_grad(), use_attention_plan(plan):
        model.forward_video(inputs["noise"], torch.full((1,), 0.5), inputs["txt"], inputs["y_vec"])
    assert len(calls) == 4 and stats().graphs == 0  # every block's attention went to the plan


def test_compile_refuses_what_it_cannot_compile():
    model, _, _ = tiny_cfg_dit(4, SHAPE)
    with pytest.raises(UsageError, match=r"compile .max.: choose one of off, blocks, forward"):
        compile_dit(model, "max")
    with pytest.raises(UsageError, match="freeze folds the weights of one whole forward"):
        compile_dit(model, "blocks", freeze=True)
    with pytest.raises(UsageError, match="has no MMDiT blocks"):
        compile_dit(torch.nn.Linear(2, 2), "blocks")
    compile_dit(model, "forward", backend="eager")
    with pytest.raises(UsageError, match="already compiled"):
        compile_dit(model, "blocks", backend="eager")


def test_the_table_refuses_compile_where_python_state_decides_per_step():
    cached = refusals(Setting(compile="forward", cache="teacache"))
    assert cached == [
        "sample.compile forward and --cache teacache cannot be combined: a caching policy runs "
        "the blocks itself with per-step hooks, so the compiled graphs would not run "
        "(vidcli.compile falls back to eager); drop one of them"
    ]
    for other in ({"tdtm": "on"}, {"sparse_attention": "sta"}, {"offload": "blocks"}):
        for mode in ("blocks", "forward"):
            assert len(refusals(Setting(compile=mode, **other))) == 1, (mode, other)
    for other in ({"offload": "model"}, {"solver": "rf2"}, {"lpl": "on"}, {"dtype": "bf16"}):
        assert refusals(Setting(compile="blocks", **other)) == [], other
    check_sequence_parallel(Setting(compile="forward"), 1)
    with pytest.raises(
        UsageError, match=r"sample\.compile blocks and launcher\.sequence_parallel = 2"
    ):
        check_sequence_parallel(Setting(compile="blocks"), 2)
    with pytest.raises(UsageError, match=r"sample\.compile forward: class-conditional models"):
        check_class_conditional(Setting(compile="forward"), "DPM-Solver")


@pytest.mark.slow  # two train-dit runs, one compiling forward and backward with inductor
def test_train_dit_compiled_takes_the_eager_steps(tmp_path):
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        values = {
            **tiny_dit_values(tmp_path / name),
            "train.max_steps": 2,
            "train.log_every": 1,
            "train.lr": 1e-3,
        }
        args = ["train-dit", *recipe_args("demo-dit.toml", values), *extra, "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "vidcli", *args],
            capture_output=True,
            text=True,
            env=subprocess_env(OMP_NUM_THREADS="1"),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        lines = (tmp_path / name / "run" / "metrics.jsonl").read_text().splitlines()
        runs[name] = (json.loads(done.stdout), [json.loads(line)["loss"] for line in lines])
    (eager, eager_losses), (compiled, compiled_losses) = runs["eager"], runs["compiled"]
    assert len(eager_losses) == 2 and eager_losses[1] != eager_losses[0]  # it trained
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled["metrics"]["compile_s"] > 0 and compiled["metrics"]["compile_graphs"] >= 1
    assert "compile_s" not in eager["metrics"]
