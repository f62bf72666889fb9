"""MMDiT diffusion transformer of Open-Sora 2.0 (and Flux-dev), its presets and checkpoint I/O."""

from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.models.mmdit.io import build_dit, load_dit, resolve_config, save_dit
from vidcli.models.mmdit.model import MMDiT, dit_flops
from vidcli.models.mmdit.packing import make_image_ids, pack_latents, unpack_latents
from vidcli.models.mmdit.presets import DIT_PRESETS

__all__ = [
    "DIT_PRESETS",
    "MMDiT",
    "MMDiTConfig",
    "build_dit",
    "dit_flops",
    "load_dit",
    "make_image_ids",
    "pack_latents",
    "resolve_config",
    "save_dit",
    "unpack_latents",
]
