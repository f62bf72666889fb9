"""What the two diffusers-backed KL autoencoders (HunyuanVideo VAE, Flux AE) share.

Both wrap a diffusers module (`self.model`, key names of the released files) behind the
interface of the DC-AE family: `encode` / `decode` on pixels in [-1, 1] shaped (B, 3, T, H, W),
`latent_shape`, `check_input_shape`, `decoded_frames`, compression factors, `tiling`.

Latent convention (Open-Sora 2.0's, spec released-pipeline.md): `encode(x)` returns
`scale · (mean − shift)` from the posterior **mode**, or from a posterior sample when
`sample=True` (with an optional generator); `decode(z)` runs the decoder on `z / scale + shift`.
Note the DC-AE family divides by its scaling factor instead: each family keeps its reference's
convention, and the latents feed only DiTs trained on that same convention.

Tiling: overlapping spatial tiles cross-faded with linear ramps (`vidcli.models.dcae.tiling`'s
spans and weights), frames in chunks; outputs always have the untiled shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from vidcli.errors import CheckpointError, ShapeError, UsageError
from vidcli.models.dcae.config import TilingConfig
from vidcli.models.dcae.tiling import blend_weights, tile_spans

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
LOGVAR_RANGE = (-30.0, 20.0)
"""Posterior log-variance clamp of diffusers' and Open-Sora's DiagonalGaussianDistribution."""


def check_keys(
    expected: dict[str, tuple[int, ...]], state: dict[str, Tensor], source: str, what: str
) -> None:
    """Raise CheckpointError naming missing, unexpected and mis-shaped keys (first few of each)."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != tuple(expected[k])
    ]
    parts = mismatch_parts(missing, unexpected, wrong)
    if parts:
        raise CheckpointError(f"{source}: weights do not match the {what}; " + "; ".join(parts))


def mismatch_parts(missing: list[str], unexpected: list[str], wrong: list[str]) -> list[str]:
    """`N missing: [first five] (+M more)` and likewise per non-empty list, for key errors."""
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {items[:5]}{more}")
    return parts


def tiled_hw(
    run: Callable[[Tensor], Tensor],
    x: Tensor,
    latent_hw: tuple[int, int],
    tile: int,
    overlap: float,
    in_scale: int,
    out_scale: int,
) -> Tensor:
    """`run` over overlapping (H, W) tiles of x (..., H, W), outputs blended with linear ramps.

    Tiles are laid out in latent units (`tile` latent pixels, `latent_hw` in total); an input
    span [a, b) is x[..., a·in_scale : b·in_scale], its output lands at [a·out_scale, b·out_scale).
    """
    spans = [tile_spans(n, tile, overlap) for n in latent_hw]
    if all(len(s) == 1 for s in spans):
        return run(x)
    weights = [blend_weights([(a * out_scale, b * out_scale) for a, b in s]) for s in spans]
    out = None
    for i, (h0, h1) in enumerate(spans[0]):
        for j, (w0, w1) in enumerate(spans[1]):
            y = run(x[..., h0 * in_scale : h1 * in_scale, w0 * in_scale : w1 * in_scale])
            if out is None:
                out = y.new_zeros(*y.shape[:-2], latent_hw[0] * out_scale, latent_hw[1] * out_scale)
            w = (weights[0][i][:, None] * weights[1][j][None, :]).to(y)
            out[..., h0 * out_scale : h1 * out_scale, w0 * out_scale : w1 * out_scale] += y * w
    assert out is not None
    return out


@dataclasses.dataclass(frozen=True)
class KLConfig:
    """The fields every family's config starts with (diffusers' names); families add the rest.

    A family config also has `scaling_factor` and `shift_factor`, names its diffusers block types
    and extends `diffusers_kwargs()`.
    """

    down_block_type: ClassVar[str] = ""
    """diffusers' encoder block class, one per stage."""
    up_block_type: ClassVar[str] = ""
    """diffusers' decoder block class, one per stage."""

    in_channels: int = 3
    """Pixel channels."""
    out_channels: int = 3
    """Decoded channels."""
    latent_channels: int = 16
    """Latent channels C."""
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    """Width of each encoder stage (the decoder mirrors them)."""
    layers_per_block: int = 2
    """ResNet blocks per encoder stage (the decoder has one more)."""

    def diffusers_kwargs(self) -> dict[str, Any]:
        """The constructor arguments every family's diffusers class takes alike."""
        n = len(self.block_out_channels)
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "latent_channels": self.latent_channels,
            "down_block_types": (self.down_block_type,) * n,
            "up_block_types": (self.up_block_type,) * n,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "act_fn": "silu",
        }


class KLAutoencoder(nn.Module):
    """Base of the diffusers-backed autoencoders: scale/shift, posterior, tiling policy.

    Subclasses name their diffusers module in `diffusers_class` (built from the config's
    `diffusers_kwargs()` as `self.model`) and implement `_moments` (pixels -> (B, 2C, T', H', W')
    posterior moments, honouring `tiling`), `_decode_latent`, and the shape rules
    `check_input_shape` / `latent_frames` / `decoded_frames`.
    """

    time_compression: int = 1
    spatial_compression: int = 8
    is_video: bool = True
    family: str = ""
    diffusers_class: str = ""

    def __init__(self, config):
        super().__init__()
        import diffusers

        self.config = config
        self.tiling: TilingConfig | None = None
        self.model = getattr(diffusers, self.diffusers_class)(**config.diffusers_kwargs())

    latent_channels = property(lambda self: self.config.latent_channels)
    scaling_factor = property(lambda self: self.config.scaling_factor)
    shift_factor = property(lambda self: self.config.shift_factor)

    # ---- shapes -------------------------------------------------------------------------------

    def check_input_shape(self, frames: int, height: int, width: int) -> None:
        """Raise ShapeError (one line listing the valid values) for a size the model cannot take."""
        sc = self.spatial_compression
        for name, v in (("height", height), ("width", width)):
            if v < sc or v % sc:
                raise ShapeError(
                    f"{name} {v}: the {self.family} takes multiples of {sc} "
                    f"(e.g. {sc * max(1, round(v / sc))})"
                )

    def latent_frames(self, frames: int) -> int:
        raise NotImplementedError

    def decoded_frames(self, latent_frames: int) -> int:
        raise NotImplementedError

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T', H', W') of the latent of a (frames, height, width) input; ShapeError if bad."""
        self.check_input_shape(frames, height, width)
        sc = self.spatial_compression
        return (self.latent_channels, self.latent_frames(frames), height // sc, width // sc)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute block activations in backward (diffusers' own switch)."""
        if enabled:
            self.model.enable_gradient_checkpointing()
        else:
            self.model.disable_gradient_checkpointing()

    def _check_tiling(self, tiling: TilingConfig) -> TilingConfig:
        sc, tc = self.spatial_compression, self.time_compression
        if tiling.spatial_tile < sc or tiling.spatial_tile % sc:
            raise UsageError(f"spatial_tile {tiling.spatial_tile}: use a multiple of {sc} px")
        if tiling.temporal_tile < tc or tiling.temporal_tile % tc:
            raise UsageError(f"temporal_tile {tiling.temporal_tile}: use a multiple of {tc} frames")
        if not 0 <= tiling.overlap <= 0.5:
            raise UsageError(f"tile overlap {tiling.overlap}: use a value in [0, 0.5]")
        return tiling

    # ---- encode / decode ----------------------------------------------------------------------

    def _as_5d(self, x: Tensor, what: str, channels: int) -> tuple[Tensor, bool]:
        squeezed = x.ndim == 4 and not self.is_video
        if squeezed:
            x = x.unsqueeze(2)
        if x.ndim != 5 or x.shape[1] != channels:
            want = "(B, C, T, H, W)" if self.is_video else "(B, C, H, W) or (B, C, T, H, W)"
            raise ShapeError(
                f"{what} of shape {tuple(x.shape)}: expected {want} with C = {channels}"
            )
        return x, squeezed

    def _moments(self, x: Tensor, tiling: TilingConfig | None) -> Tensor:
        raise NotImplementedError

    def _decode_latent(self, z: Tensor, tiling: TilingConfig | None) -> Tensor:
        raise NotImplementedError

    def posterior(self, x: Tensor, tiling: TilingConfig | None = None) -> tuple[Tensor, Tensor]:
        """Posterior (mean, logvar) of pixels x (B, 3, T, H, W), before scale and shift."""
        x5, _ = self._as_5d(x, "encode input", self.model.config.in_channels)
        self.check_input_shape(*x5.shape[2:])
        tiling = tiling or self.tiling
        moments = self._moments(x5, self._check_tiling(tiling) if tiling else None)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def encode(
        self,
        x: Tensor,
        tiling: TilingConfig | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Pixels (B, 3, T, H, W) in [-1, 1] -> latent scale·(z − shift) (B, C, T', H', W').

        z is the posterior mode, or a sample `mean + std·randn(generator)` when `sample`.
        """
        mean, logvar = self.posterior(x, tiling)
        z = mean
        if sample:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise.to(mean.device)
        z = self.scaling_factor * (z - self.shift_factor)
        return z.squeeze(2) if x.ndim == 4 else z

    def decode(self, z: Tensor, tiling: TilingConfig | None = None) -> Tensor:
        """Latent (B, C, T', H', W') from `encode` -> pixels (B, 3, T, H, W)."""
        z5, squeezed = self._as_5d(z, "decode input", self.latent_channels)
        z5 = z5 / self.scaling_factor + self.shift_factor
        tiling = tiling or self.tiling
        x = self._decode_latent(z5, self._check_tiling(tiling) if tiling else None)
        return x.squeeze(2) if squeezed else x

    def _decode_raw(self, z: Tensor) -> Tensor:
        """Untiled decode of an unscaled 5-D latent (the DC-AE's name: memory plans measure it)."""
        return self._decode_latent(z, None)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction decode(encode(x))."""
        return self.decode(self.encode(x))


# ---------------------------------------------------------------------------------------------
# Config and weight-file plumbing shared by the two families


def config_with(config, overrides: dict[str, Any], what: str):
    """`config` (a dataclass) with fields replaced; lists become tuples; unknown names raise."""
    names = [f.name for f in dataclasses.fields(config)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise UsageError(f"unknown {what} field(s) {unknown}; allowed: {', '.join(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **values)


def read_diffusers_config(folder: Path, class_names: tuple[str, ...]) -> dict[str, Any]:
    """A diffusers folder's config.json, checked to describe one of `class_names`."""
    path = folder / DIFFUSERS_CONFIG
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the autoencoder config ({e})") from None
    if raw.get("_class_name") not in class_names:
        raise CheckpointError(
            f"{path}: _class_name {raw.get('_class_name')!r}, expected {' or '.join(class_names)}"
        )
    return raw


def folder_weights(folder: Path) -> Path:
    """diffusion_pytorch_model.safetensors, else the folder's only .safetensors file."""
    if (folder / DIFFUSERS_WEIGHTS).is_file():
        return folder / DIFFUSERS_WEIGHTS
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise CheckpointError(
            f"{folder}: expected {DIFFUSERS_WEIGHTS} or exactly one .safetensors file, "
            f"found {[p.name for p in found] or 'none'}"
        )
    return found[0]


def load_weights(path: Path) -> dict[str, Tensor]:
    """A .safetensors file as fp32 tensors (released files may be bf16)."""
    return {k: v.float() for k, v in load_file(str(path)).items()}


@dataclasses.dataclass(frozen=True)
class KLFamily:
    """One family's own data; its presets, builder and loader are the methods below."""

    model_class: type[KLAutoencoder]
    """The wrapper; `model_class(config)` builds it; it names the family and diffusers class."""
    config_class: type
    """The family's config dataclass (a KLConfig)."""
    presets: dict[str, Any]
    """Preset name -> config."""
    required: dict[str, Any]
    """Values a diffusers config.json must have (or omit) for vidcli to load it."""
    refusal: str
    """Message tail for a config.json value outside `required`; `{want!r}` is the value."""
    to_diffusers_layout: Callable[[dict[str, Tensor], Any, str], dict[str, Tensor]] | None = None
    """(state, config, source) -> the state in diffusers' key names; None: files use them."""

    @property
    def name(self) -> str:
        """In messages, e.g. "Flux AE"."""
        return self.model_class.family

    def resolve(self, preset: str | Any, **overrides: Any) -> Any:
        """A preset name or config, with field overrides."""
        if isinstance(preset, str):
            if preset not in self.presets:
                raise UsageError(
                    f"unknown {self.name} preset {preset!r}; presets: {', '.join(self.presets)}"
                )
            preset = self.presets[preset]
        return config_with(preset, overrides, self.config_class.__name__) if overrides else preset

    def build(
        self, preset: str | Any, device: torch.device | str | None = None, **overrides: Any
    ) -> KLAutoencoder:
        """A randomly initialised model; `device='meta'` builds the full size for free."""
        with torch.device(device or "cpu"):
            return self.model_class(self.resolve(preset, **overrides))

    def config_from_diffusers(self, raw: dict[str, Any], source: str) -> Any:
        """Our config from a diffusers config.json of `model_class.diffusers_class`."""
        for key, want in self.required.items():
            if raw.get(key, want) != want:
                raise UsageError(
                    f"{source}: {key} = {raw[key]!r}; " + self.refusal.format(want=want)
                )
        fields = set(dataclasses.asdict(self.config_class()))
        values = {k: v for k, v in raw.items() if k in fields and v is not None}
        return config_with(self.config_class(), values, self.config_class.__name__)

    def load(self, path: str | Path, preset: str | None = None, **overrides: Any) -> KLAutoencoder:
        """Load strictly, eval mode, fp32: a bare .safetensors file with a preset, or a diffusers
        folder (config.json + weights)."""
        path = Path(path)
        if path.is_file():
            if preset is None:
                names = ", ".join(self.presets)
                raise UsageError(f"{path}: a bare weights file needs a preset; presets: {names}")
            config, weights = self.resolve(preset, **overrides), path
        else:
            raw = read_diffusers_config(path, (self.model_class.diffusers_class,))
            config = self.config_from_diffusers(raw, str(path / DIFFUSERS_CONFIG))
            if overrides:
                config = config_with(config, overrides, self.config_class.__name__)
            weights = folder_weights(path)
        state = load_weights(weights)
        if self.to_diffusers_layout is not None:
            state = self.to_diffusers_layout(state, config, str(weights))
        model = self.build(config, device="meta")
        expected = {k: tuple(v.shape) for k, v in model.model.state_dict().items()}
        check_keys(expected, state, str(weights), f"{self.name} config (preset / ae.overrides)")
        model.model.load_state_dict(state, strict=True, assign=True)
        return model.float().eval()
