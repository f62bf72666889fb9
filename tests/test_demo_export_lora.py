"""`python -m vidcli.demo dit` on a LoRA run's checkpoint: its EMA file holds the adapter layout
(base weights + A/B pairs), which the export merges as `generate` does."""

import torch
from safetensors.torch import load_file

import vidcli.demo as demo
from vidcli.models.mmdit import build_dit
from vidcli.recipe import LoRASection
from vidcli.train import lora
from vidcli.train.dit_weights import save_dit_weights

KEY = "double_blocks.0.img_attn.q_proj"


def _lora_checkpoint(folder):
    """What train-dit writes for a LoRA run: merged model.safetensors, adapter-layout EMA."""
    torch.manual_seed(0)
    section = LoRASection(rank=2, alpha=6.0)
    model = lora.add_lora(build_dit("mmdit-tiny"), section)
    gen = torch.Generator().manual_seed(1)
    folder.mkdir()
    for stem in ("model", "ema"):  # different trained-looking adapters (B is zero at init)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=gen))
        save_dit_weights(model, model.state_dict(), folder, stem, lora=section)
    return folder


def test_dit_export_of_a_lora_checkpoint_merges_its_ema_adapters(tmp_path):
    ckpt = _lora_checkpoint(tmp_path / "ckpt")
    assert demo.main(["dit", str(ckpt), "--out", str(tmp_path / "export")]) == 0
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    ema = load_file(str(ckpt / "ema.safetensors"))
    # W' = W + (alpha / r) B @ A, alpha / r = 3.
    expected = ema[f"{KEY}.base_layer.weight"] + 3.0 * (
        ema[f"{KEY}.lora_B.default.weight"] @ ema[f"{KEY}.lora_A.default.weight"]
    )
    assert not any("lora_" in k or "base_layer" in k for k in exported)
    assert torch.equal(exported[f"{KEY}.weight"], expected.to(torch.bfloat16))
    model = load_file(str(ckpt / "model.safetensors"))  # the raw weights differ: EMA was taken
    assert not torch.equal(exported[f"{KEY}.weight"], model[f"{KEY}.weight"].to(torch.bfloat16))
    assert torch.equal(exported["img_in.weight"], ema["img_in.weight"].to(torch.bfloat16))
