"""One runner for reference-vector files: compute a file's `out.*` tensors from its inputs.

`run(family, tensors, meta)` takes a vector file's tensors (weights under `model.` / `xblock.`
in the original key layout, inputs under `in.`) and its JSON, and returns every `out.*` tensor
the JSON's `calls` describe, computed through vidcli's public API only. Every size comes from the
JSON, so hidden vectors of another config of the same family are checked the same way.

A family is one function in `RUNNERS`; add yours with `RUNNERS["name"] = fn` (or a decorator
`@runner("name")`) and call `run("name", ...)` from its test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Runner = Callable[[dict[str, Tensor], dict[str, Any]], dict[str, Tensor]]
RUNNERS: dict[str, Runner] = {}


def runner(family: str) -> Callable[[Runner], Runner]:
    """Register `fn(tensors, meta) -> outputs` as the runner of `family`."""

    def register(fn: Runner) -> Runner:
        RUNNERS[family] = fn
        return fn

    return register


def run(family: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    """The `out.*` tensors of a vector file of `family`, computed in float32."""
    if family not in RUNNERS:
        raise KeyError(f"no reference-vector runner for {family!r}; known: {sorted(RUNNERS)}")
    tensors = {k: v.float() for k, v in tensors.items()}
    with torch.no_grad():
        return RUNNERS[family](tensors, meta)


def weights(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under `prefix.` with the prefix dropped (a state dict)."""
    return {
        k.removeprefix(prefix + "."): v for k, v in tensors.items() if k.startswith(prefix + ".")
    }


@runner("reducio-vae")
def _reducio(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Tensor]:
    from vidcli.models.dcae import TilingConfig
    from vidcli.models.reducio import (
        FusionBlock,
        ReducioConfig,
        ReducioVAE,
        normalize_latent,
        sample_posterior,
    )

    config = ReducioConfig.from_dict(meta["config"])
    model = ReducioVAE(config)
    model.load_state_dict(weights(tensors, "model"), strict=True)
    model.eval()
    # The reference's use_tiling=True at the config's own tile size.
    tiling = TilingConfig(
        spatial_tile=config.tile_sample_min_size, overlap=config.tile_overlap_factor
    )
    out: dict[str, Tensor] = {}
    video = tensors["in.video"]
    mean, logvar = model.posterior(video)
    sample = sample_posterior(mean, logvar, tensors["in.posterior_eps"])
    latent = normalize_latent(sample)
    out.update(
        {
            "out.posterior_mean": mean,
            "out.posterior_logvar": logvar,
            "out.latent_sample": sample,
            "out.latent": latent,
        }
    )
    pyramid = model.encode_content(tensors["in.content"])
    out.update({f"out.content_feat.{i}": f for i, f in enumerate(pyramid.features)})
    out["out.recon"] = model.decode(latent, content=pyramid)
    out["out.recon_rand"] = model.decode(tensors["in.latent_rand"], tensors["in.content_rand"])
    mean_t, logvar_t = model.posterior(tensors["in.video_tiled"], tiling=tiling)
    out["out.posterior_mean_tiled"] = mean_t
    out["out.posterior_logvar_tiled"] = logvar_t
    out["out.recon_tiled"] = model.decode(
        tensors["in.latent_tiled"], content=tensors["in.content_tiled"], tiling=tiling
    )

    xb = meta["xblock"]
    window = xb["window_size"]
    window = tuple(window) if isinstance(window, list) else (window, window)
    block = FusionBlock(xb["dim"], xb["context_dim"], xb["temp_res"], window, xb.get("d_head", 64))
    block.load_state_dict(weights(tensors, "xblock"), strict=True)
    assert block.attn.heads == xb.get("heads", block.attn.heads), (block.attn.heads, xb["heads"])
    for case in ("global", "window"):
        x, ctx = tensors[f"in.xblock_x_{case}"], tensors[f"in.xblock_ctx_{case}"]
        out[f"out.xblock_{case}"] = block(x, ctx)
    return out


def _register_dcae_diffusion() -> None:
    # imported here: that module imports vidcli's samplers, which the other families never need
    from reference_vectors_dcae_diffusion import dit_outputs, uvit_outputs

    RUNNERS["dcae-diffusion-uvit"] = uvit_outputs
    RUNNERS["dcae-diffusion-dit"] = dit_outputs


_register_dcae_diffusion()
