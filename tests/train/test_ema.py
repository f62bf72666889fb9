"""The EMA averages only the parameters that train; a frozen one is its own average (LoRA)."""

import pytest
import torch
from safetensors.torch import save_file

from vidcli.models.mmdit import build_dit
from vidcli.recipe import LoRASection
from vidcli.train import lora
from vidcli.train.ema import EMA


def _lora_dit():
    torch.manual_seed(0)
    dit = build_dit("mmdit-tiny", in_channels=8, patch_size=1, vec_in_dim=384)
    section = LoRASection(rank=2)
    count = lora.trainable_parameter_count(dit, section)  # counted before PEFT wraps the Linears
    return lora.add_lora(dit, section), count


def _step(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen))


def test_lora_ema_keeps_only_the_adapters():
    dit, adapters = _lora_dit()
    ema = EMA(dit, 0.9)
    kept = sum(t.numel() for t in ema.shadow.values())
    assert kept == adapters
    assert kept < sum(p.numel() for p in dit.parameters()) / 10


def test_ema_state_equals_the_average_of_every_parameter():
    """Closed form: after updates with params p1..pn, shadow = d^n p0 + (1-d) sum d^(n-k) pk;
    a frozen parameter stays p0, so its average is p0."""
    dit, _ = _lora_dit()
    decay, gen = 0.9, torch.Generator().manual_seed(3)
    start = {n: p.detach().clone() for n, p in dit.named_parameters()}
    expected = dict(start)
    ema = EMA(dit, decay)
    for _ in range(3):
        _step(dit, gen)
        ema.update(dit)
        for n, p in dit.named_parameters():
            expected[n] = decay * expected[n] + (1 - decay) * p.detach()
    state = ema.state_dict()
    assert set(state) == set(start)
    for n, p in dit.named_parameters():
        assert state[n].dtype == torch.float32
        torch.testing.assert_close(state[n], expected[n], rtol=1e-6, atol=1e-6)
        if not p.requires_grad:
            assert torch.equal(state[n], start[n])
        else:
            assert not torch.equal(state[n], start[n])


def test_ema_resumes_from_its_saved_file(tmp_path):
    dit, _ = _lora_dit()
    gen = torch.Generator().manual_seed(4)
    ema = EMA(dit, 0.5)
    _step(dit, gen)
    ema.update(dit)
    save_file(ema.state_dict(), str(tmp_path / "ema.safetensors"))
    fresh = EMA(dit, 0.5)  # shadows = the current weights, not the average
    fresh.load_file(tmp_path / "ema.safetensors")
    for name, shadow in ema.shadow.items():
        assert torch.equal(fresh.shadow[name], shadow)

    adapters_missing = {k: v for k, v in ema.state_dict().items() if "lora_" not in k}
    with pytest.raises(KeyError, match="lora_"):
        fresh.load_state_dict(adapters_missing)
