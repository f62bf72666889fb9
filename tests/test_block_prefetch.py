"""Block streaming with prefetch (`vidcli.offload.BlockStream`): a streamed DiT computes exactly
what the resident one does, the host weights are never rewritten, a block prefetched but
skipped is dropped, and the plan states the transfer per denoiser call."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from vidcli.generate import load_generate_recipe
from vidcli.offload import stream_blocks
from vidcli.placement import Placement
from vidcli.plans.generate import plan_generate
from vidcli.plans.sizes import GB, block_params, meta_dit
from vidcli.sampling.phases import encode_text
from vidcli.sampling.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    """The demo DiT (fp32, CPU) and one denoiser call's inputs."""
    recipe = load_generate_recipe(None, None, ["sample.frames=4"])
    pipe = load_pipeline(recipe, Placement(torch.device("cpu")), ema=False)
    with torch.no_grad():
        emb, _ = encode_text(pipe, ["a red circle moving right"], [""])
    s = recipe.sample
    shape = pipe.ae.latent_shape(s.frames, s.height, s.width)
    latents = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))
    return pipe.dit, (latents, torch.tensor([0.7]), emb.tokens, emb.pooled)


def blocks(dit):
    return [*dit.double_blocks, *dit.single_blocks]


def host_state(dit) -> dict[str, tuple[tuple[int, int], torch.Tensor]]:
    """Each block tensor's identity and storage address, and a copy of its values."""
    return {
        f"{i}.{name}": ((id(t), t.data_ptr()), t.detach().clone())
        for i, block in enumerate(blocks(dit))
        for name, t in [*block.named_parameters(), *block.named_buffers()]
    }


def test_streamed_dit_equals_resident_dit_and_leaves_host_weights_alone(demo):
    dit, inputs = demo
    streamed = copy.deepcopy(dit)
    remove = stream_blocks(streamed, torch.device("cpu"))
    before = host_state(streamed)
    with torch.inference_mode():
        want = dit.forward_video(*inputs)
        got = [streamed.forward_video(*inputs) for _ in range(2)]
    assert torch.equal(got[0], want) and torch.equal(got[1], want)
    after = host_state(streamed)
    assert after.keys() == before.keys()
    for key, (ptr, values) in before.items():
        assert after[key][0] == ptr, f"{key} is another tensor or storage"
        assert torch.equal(after[key][1], values), f"{key} was rewritten"
    remove()
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in blocks(streamed))


def test_prefetch_follows_the_blocks_that_run(demo):
    """Block i prefetches i+1; a block called out of order is fetched then, and the unused
    prefetch is dropped (a cache that skips blocks holds no extra copy)."""
    dit, _ = demo
    streamed = copy.deepcopy(dit)
    stream_blocks(streamed, torch.device("cpu"))
    first = blocks(streamed)[0]
    hook = next(iter(first._forward_pre_hooks.values()))
    stream = hook.__self__
    n = len(blocks(streamed))
    assert n >= 3 and not stream.ready
    stream.arrive(first, ())
    assert list(stream.ready) == [1]
    stream.leave(first, (), None)
    stream.arrive(blocks(streamed)[2], ())  # block 1 skipped
    assert list(stream.ready) == [3 % n]
    stream.leave(blocks(streamed)[2], (), None)
    stream.arrive(blocks(streamed)[-1], ())
    assert not stream.ready  # nothing stays on the device after a call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pinned copies, streams")
def test_cuda_streaming_pins_once_and_matches_resident(demo):
    dit, inputs = demo
    cuda = torch.device("cuda")
    resident = copy.deepcopy(dit).to(cuda)
    streamed = copy.deepcopy(dit)
    stream_blocks(streamed, cuda)
    assert all(t.is_pinned() for b in blocks(streamed) for t in b.parameters())
    before = host_state(streamed)
    moved = [t.to(cuda) for t in inputs]
    with torch.inference_mode():
        want = resident.forward_video(*moved)
        got = streamed.forward_video(*moved)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    after = host_state(streamed)
    assert all(after[k][0] == ptr and torch.equal(after[k][1], v) for k, (ptr, v) in before.items())


def test_block_streaming_plan_reports_the_transfer_per_call():
    recipe = load_generate_recipe(REPO / "recipes" / "opensora-v2-768px.toml", None, [])
    plan = plan_generate(recipe, torch.device("cuda"), torch.bfloat16, 24.0, link_gb_s=12.5)
    assert plan.offload == "blocks"
    dit = meta_dit(recipe.dit, plan.latent_shape[0], recipe.text)
    assert plan.streamed_gb == pytest.approx(block_params(dit) * 2 / GB)
    assert plan.transfer_ms_per_call == pytest.approx(plan.streamed_gb * GB / 12.5e9 * 1e3)
    assert any("12.5 GB/s" in line for line in plan.stdout_lines())
    resident = plan_generate(recipe, torch.device("cuda"), torch.bfloat16, 80.0)
    assert resident.offload != "blocks" and resident.transfer_ms_per_call == 0.0
