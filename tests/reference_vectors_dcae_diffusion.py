"""Reference-vector runners of the DC-AE-Diffusion families (registered in reference_vectors.py).

`uvit_outputs` / `dit_outputs` compute a `dcae_diffusion_{uvit,dit}_*` file's outputs from its
weights (`model.<network key>`), its `in.*` tensors and its JSON (config, sampler settings)
through vidcli's public API; no size is taken from the public A file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vidcli.models.dcae_diffusion import DiT, DiTConfig, UViT, UViTConfig, forward_with_cfg
from vidcli.sampling.class_conditional import ddpm, dpm_solver, sit_ode

_UVIT_FIELDS = ("in_channels", "input_size", "patch_size", "hidden_size", "depth", "num_heads")
_DIT_FIELDS = (*_UVIT_FIELDS, "learn_sigma")


def _network(cls, config_cls, fields: tuple[str, ...], tensors, meta) -> UViT | DiT:
    config = meta["config"]
    kwargs = {f: config[f] for f in fields}
    net = cls(
        config_cls(**kwargs, mlp_ratio=config["mlp_ratio"], num_classes=config["num_classes"])
    )
    state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    net.load_state_dict(state, strict=True)
    return net.eval()


def _forwards(net: UViT | DiT, tensors: dict[str, Tensor], cfg_scale: float) -> dict[str, Tensor]:
    """out.forward on in.{x,t,y}; out.forward_cfg on the first rows of in.x/in.t doubled."""
    x, t, y = tensors["in.x"], tensors["in.t"], tensors["in.y"].long()
    cfg_y = tensors["in.cfg_y"].long()
    rows = len(cfg_y) // 2
    x2, t2 = torch.cat((x[:rows], x[:rows])), torch.cat((t[:rows], t[:rows]))
    return {
        "out.forward": net(x, t, y),
        "out.forward_cfg": forward_with_cfg(net, x2, t2, cfg_y, cfg_scale),
    }


def uvit_outputs(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """UViT / USiT: forwards, DPM-Solver, heun2 and dopri5 sample."""
    net = _network(UViT, UViTConfig, _UVIT_FIELDS, tensors, meta)
    samplers = meta["samplers"]
    noise, labels = tensors["in.gen_noise"], tensors["in.gen_y"].long()
    dpm, heun, dp5 = samplers["dpm"], samplers["sit_heun2"], samplers["sit_dopri5"]
    out = _forwards(net, tensors, dpm["cfg_scale"])
    out["out.dpm.sample"] = dpm_solver(net, noise, labels, dpm["cfg_scale"], steps=dpm["steps"])
    out["out.sit_heun2.sample"] = sit_ode(
        net, noise, labels, heun["cfg_scale"], heun["num_steps"], method="heun2"
    )
    out["out.sit_dopri5.sample"] = sit_ode(
        net, noise, labels, dp5["cfg_scale"], dp5["num_steps"], method="dopri5"
    )
    return out


def dit_outputs(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """DiT: forwards, the short DDPM run with injected noise, the 250-step run on a seeded RNG."""
    net = _network(DiT, DiTConfig, _DIT_FIELDS, tensors, meta)
    samplers = meta["samplers"]
    noise, labels = tensors["in.gen_noise"], tensors["in.gen_y"].long()
    short, full = samplers["ddpm"], samplers["ddpm250"]
    out = _forwards(net, tensors, short["cfg_scale"])
    out["out.ddpm.sample"] = ddpm(
        net,
        noise,
        labels,
        short["cfg_scale"],
        steps=short["steps"],
        step_noise=tensors["in.ddpm.step_noise"],
    )
    # upstream seeds torch's global CPU RNG; a fresh generator with that seed draws the same
    generator = torch.Generator().manual_seed(full["rng_seed"])
    out["out.ddpm250.sample"] = ddpm(
        net, noise, labels, full["cfg_scale"], steps=full["steps"], generator=generator
    )
    return out
