"""The models of a sampling run, loaded once and placed where the run's `Placement` says.

Every model is built and given its weights in host memory (checkpoint EMA included), then placed:
cast to its dtype and moved to the device, or left on the host to wait for its phase.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vidcli.compile import CompileStats, compile_dit
from vidcli.console import log
from vidcli.placement import Placement
from vidcli.quantize import quantize_linears
from vidcli.recipe import Recipe

EMA_FILE = "ema.safetensors"
"""The EMA weights a train-dit checkpoint folder holds beside model.safetensors."""


@dataclass
class Pipeline:
    """The models of a generation run, loaded once, and where they live.

    Between phases every model is at `placement.home(role)`; a phase moves its models with
    `placement.on_device` and nothing else moves them.
    """

    ae: Any
    text: Any
    dit: Any
    placement: Placement
    t2i: Any = None
    """The t2i2v image stage (`vidcli.sampling.t2i2v.ImageStage`) when `[t2i] enabled`."""
    compile_stats: Callable[[], CompileStats] | None = None
    """What compiling the DiT cost so far (`[sample] compile`, `vidcli.compile`)."""

    @property
    def device(self) -> str:
        """The compute device, index included (`cuda:1`)."""
        return self.placement.name

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: the DiT's weights, and autocast's dtype while sampling and decoding."""
        return self.placement.dtype

    @property
    def offload(self) -> str:
        """The memory plan's offload: none, model (one phase's models at a time) or blocks."""
        return self.placement.offload


def load_pipeline(recipe: Recipe, placement: Placement | None = None, ema: bool = True) -> Pipeline:
    """Build the `[ae]`, `[text]`, `[dit]` (and `[t2i]`) models of a recipe and place them.

    placement: None = the best device and its default dtype, nothing offloaded. When `[dit] path`
    is a train-dit checkpoint holding EMA weights, `ema` samples those.
    """
    from vidcli.builders import (
        autoencoder_from_section,
        dit_from_section,
        text_encoder_from_section,
    )
    from vidcli.data.provenance import check_checkpoint

    placement = placement or Placement.resolve()
    ae = autoencoder_from_section(recipe.ae).eval()
    if recipe.dit.path:  # a DiT trained on another AE's latents would sample noise
        check_checkpoint(recipe.dit.path, recipe.ae, ae)
    # Built where it waits, in its dtype: a large T5 never passes through the other place.
    text = text_encoder_from_section(
        recipe.text, device=placement.home("text"), dtype=placement.weights_dtype("text")
    )
    dit = dit_from_section(recipe.dit, ae.latent_channels, text).eval()
    if ema and recipe.dit.path:
        load_ema_weights(dit, Path(recipe.dit.path))
    placement.place(dit, "dit")
    # Quantized where it computes, once placed: torchao's weights do not move (`vidcli.quantize`).
    quantize_linears(dit, recipe.sample.quantize)
    # Last: the compiled graphs see the placed, quantized weights (they compile on first use).
    compile_stats = compile_dit(dit, recipe.sample.compile)
    placement.place(ae, "ae")
    t2i = image_stage(recipe, text, placement) if recipe.t2i.enabled else None
    return Pipeline(
        ae=ae, text=text, dit=dit, placement=placement, t2i=t2i, compile_stats=compile_stats
    )


def image_stage(recipe: Recipe, text, placement: Placement):
    """The `[t2i]` models of t2i2v (distilled image DiT + its AE), built like `[dit]`/`[ae]`."""
    from vidcli.builders import autoencoder_from_section, dit_from_section
    from vidcli.recipe import AESection, DiTSection
    from vidcli.sampling.t2i2v import ImageStage

    t2i = recipe.t2i
    # One image: the reference runs Flux's AE untiled.
    ae_section = AESection(
        preset=t2i.ae_preset, path=t2i.ae_path, overrides=t2i.ae_overrides, tiling=False
    )
    ae = autoencoder_from_section(ae_section).eval()
    dit_section = DiTSection(preset=t2i.preset, path=t2i.path, overrides=t2i.overrides)
    # A guidance-distilled DiT (flux-dev) samples with its guidance embedding; any other samples
    # with text CFG at [t2i] guidance (`vidcli.sampling.t2i2v.sample_images`).
    dit = dit_from_section(dit_section, ae.latent_channels, text).eval()
    placement.place(dit, "t2i_dit")
    placement.place(ae, "t2i_ae")
    steps = t2i.steps or recipe.sample.steps
    return ImageStage(
        dit=dit,
        ae=ae,
        resolution=t2i.resolution,
        guidance=t2i.guidance,
        steps=steps,
        frames=t2i.frames,
    )


def load_ema_weights(dit: torch.nn.Module, checkpoint: Path) -> bool:
    """Load `checkpoint/ema.safetensors` into `dit` (strict) if there is one; True if loaded.

    The file is read into host memory and copied into `dit` tensor by tensor (cast to its
    dtype), so fp32 EMA weights never occupy the device.
    """
    from safetensors.torch import load_file

    from vidcli.models.adapters import plain_state  # a LoRA run's EMA: adapters merged

    ema_file = checkpoint / EMA_FILE
    if not ema_file.is_file():
        return False
    state = plain_state(ema_file, load_file(str(ema_file), device="cpu"))
    dit.load_state_dict(state, strict=True)
    log.info("sampling the EMA weights of %s (--raw-weights for the raw ones)", checkpoint)
    return True
