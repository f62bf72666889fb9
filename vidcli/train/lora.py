"""LoRA training on the MMDiT: which Linears `[lora]` targets and PEFT adapters injected in place.

Training injects PEFT's `lora.Linear` wrappers (the model keeps its class and forward); B is
zero at initialisation, so the adapted model starts as the base model. Adapter files, merging
and the checkpoint's adapter layout live in `vidcli.models.adapters`, which generate also reads.
"""

from __future__ import annotations

from torch import nn

from vidcli.errors import UsageError
from vidcli.models.adapters import LoRAWeights
from vidcli.recipe import LoRASection


def lora_alpha(section: LoRASection) -> float:
    """The section's alpha, with 0 meaning alpha = rank."""
    return float(section.alpha or section.rank)


def target_linears(model: nn.Module, section: LoRASection) -> dict[str, nn.Linear]:
    """The Linear modules `[lora] targets` selects, by name (PEFT's suffix matching)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(
            name == t or name.endswith(f".{t}") for t in section.targets
        ):
            found[name] = module
    if not found:
        raise UsageError(
            f"[lora] targets {section.targets} match no Linear layer of the DiT; "
            "use names such as qkv, q_proj, proj, img_mlp.0, linear1, linear2"
        )
    return found


def trainable_parameter_count(model: nn.Module, section: LoRASection) -> int:
    """Parameters a rank-r LoRA adds (= trains): r * (in + out) per targeted Linear.

    Works on a model built on the `meta` device, so a memory plan can count LoRA without memory.
    """
    return sum(
        section.rank * (m.in_features + m.out_features)
        for m in target_linears(model, section).values()
    )


def add_lora(model: nn.Module, section: LoRASection, trainable: tuple[str, ...] = ()) -> nn.Module:
    """Inject PEFT LoRA adapters in place; only adapters (and modules named in `trainable`) train.

    The model keeps its class, forward and config; its targeted Linears become PEFT
    `lora.Linear` wrappers (state-dict keys gain `.base_layer` / `.lora_A.default` / ...).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if section.rank < 1:
        raise UsageError("[lora] rank must be >= 1 to add adapters")
    names = sorted(target_linears(model, section))
    config = LoraConfig(
        r=section.rank,
        lora_alpha=lora_alpha(section),
        lora_dropout=section.dropout,
        # Exact module names: PEFT then wraps exactly what `target_linears` selected.
        target_modules=names,
        init_lora_weights=True,
    )
    model = inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name or any(
            name == t or name.startswith(f"{t}.") for t in trainable
        )
    return model


def adapter_weights(model: nn.Module) -> LoRAWeights:
    """The A/B pairs of a PEFT-adapted model (fp32, CPU), by base module name."""
    down, up, alpha = {}, {}, {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            down[name] = module.lora_A["default"].weight.detach().float().cpu().clone()
            up[name] = module.lora_B["default"].weight.detach().float().cpu().clone()
            alpha[name] = float(module.lora_alpha["default"])
    if not down:
        raise UsageError("the model has no LoRA adapters")
    return LoRAWeights(down, up, alpha)
