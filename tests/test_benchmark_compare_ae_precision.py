"""compare-ae's DiT train step runs in train-dit's regime: fp32 master weights and AdamW state, the
forward under bf16 autocast; the denoising step samples with bf16 weights as generate does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidcli.benchmark import row_memory
from vidcli.benchmark.compare_ae import RowBench, parse_ae_spec, pixel_alignment, row_tokens
from vidcli.benchmark.options import BenchmarkOptions, resolve_settings


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bf16_train_step_keeps_fp32_masters_under_autocast():
    spec = parse_ae_spec("dc-ae-tiny:1")
    options = BenchmarkOptions(
        compare_ae=True, dit="mmdit-tiny", resolution=64, frames=8, dtype="bf16"
    )
    s = resolve_settings(options, pixel_alignment([spec]))
    row = RowBench(dataclasses.asdict(spec), dataclasses.asdict(s))
    linear = next(m for m in row.model.modules() if isinstance(m, torch.nn.Linear))
    outputs = []
    linear.register_forward_hook(lambda module, args, out: outputs.append(out.dtype))
    row.train()
    assert outputs == [torch.bfloat16]  # autocast lowered the matmul
    assert {p.dtype for p in row.model.parameters()} == {torch.float32}
    moments = [v for st in row.optimizer.state.values() for k, v in st.items() if k != "step"]
    assert moments and {m.dtype for m in moments} == {torch.float32}
    params = sum(p.numel() for p in row.model.parameters())
    need = row_memory.row_memory(spec.label, s.dit, {}, row_tokens(spec, s)[0], s)
    assert need.states_gb == pytest.approx(params * 4 * 4 / 1e9)  # fp32 weights, grads, moments
    row.finish_train()
    assert {p.dtype for p in row.model.parameters()} == {torch.bfloat16}
    assert row.infer() > 0
