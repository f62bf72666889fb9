"""MMDiTConfig: the Open-Sora 2.0 / Flux MMDiT hyper-parameters, with the reference field names.

Field names equal Open-Sora's `MMDiTConfig` so that a reference `config.json` loads unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vidcli.errors import UsageError

# Keys a reference config.json may hold that describe where weights came from, not the model.
REFERENCE_ONLY_KEYS = frozenset({"from_pretrained", "cache_dir", "model_type", "type", "format"})


@dataclass
class MMDiTConfig:
    """Hyper-parameters of an MMDiT (double-stream + single-stream transformer, rectified flow)."""

    in_channels: int = 64
    """Token width = latent channels * patch_size**2; the output has the same width."""
    vec_in_dim: int = 768
    """Width of the pooled text vector (CLIP-L pooled: 768) fed to `vector_in`."""
    context_in_dim: int = 4096
    """Width of the per-token text embeddings (T5-XXL: 4096) fed to `txt_in`."""
    hidden_size: int = 3072
    """Transformer width H."""
    mlp_ratio: float = 4.0
    """MLP hidden width = mlp_ratio * hidden_size."""
    num_heads: int = 24
    """Attention heads; head_dim = hidden_size / num_heads."""
    depth: int = 19
    """Number of double-stream blocks (separate text and image weights, joint attention)."""
    depth_single_blocks: int = 38
    """Number of single-stream blocks (one stream over [text; image])."""
    axes_dim: tuple[int, ...] = (16, 56, 56)
    """RoPE channels per position axis (t, h, w); must sum to head_dim, each even."""
    theta: int = 10_000
    """RoPE base."""
    qkv_bias: bool = True
    """Bias on the double-block q/k/v (or fused qkv) projections; every other Linear has one."""
    guidance_embed: bool = False
    """Add `guidance_in(temb(guidance))` to the modulation vector (Flux-dev distilled guidance)."""
    cond_embed: bool = False
    """Add `cond_in(cond)`: image/video conditioning tokens, width in_channels + patch_size**2."""
    fused_qkv: bool = True
    """Fused `qkv` / `linear1` weights (Flux layout) instead of q_proj/k_proj/v_proj(/v_mlp)."""
    use_liger_rope: bool = False
    """RoPE pairs channels (m, m + head_dim/2) (Open-Sora 2.0) instead of (2m, 2m+1) (Flux)."""
    patch_size: int = 2
    """Spatial patch size p: a token covers p x p latent pixels of one latent frame."""
    grad_ckpt_settings: tuple[int, int] | None = None
    """Activation checkpointing of the first (n_double, n_single) blocks; None = off."""

    def __post_init__(self) -> None:
        self.axes_dim = tuple(int(a) for a in self.axes_dim)
        if self.grad_ckpt_settings is not None:
            self.grad_ckpt_settings = tuple(int(n) for n in self.grad_ckpt_settings)
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        else:
            head_dim = self.hidden_size // self.num_heads
            if sum(self.axes_dim) != head_dim:
                problems.append(
                    f"axes_dim {list(self.axes_dim)} sums to {sum(self.axes_dim)}, "
                    f"expected head_dim {head_dim} (= hidden_size / num_heads)"
                )
        if len(self.axes_dim) != 3 or any(a <= 0 or a % 2 for a in self.axes_dim):
            problems.append(f"axes_dim {list(self.axes_dim)} must be 3 positive even numbers")
        for name in ("in_channels", "vec_in_dim", "context_in_dim", "patch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0 or self.depth_single_blocks < 0:
            problems.append(
                f"depth {self.depth} / depth_single_blocks {self.depth_single_blocks} must be >= 0"
            )
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.grad_ckpt_settings is not None and len(self.grad_ckpt_settings) != 2:
            problems.append("grad_ckpt_settings must be (n_double, n_single) or None")
        if problems:
            raise UsageError("invalid MMDiTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def cond_channels(self) -> int:
        """Width of a conditioning token: p² mask values then in_channels latent values."""
        return self.in_channels + self.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the reference field names."""
        d = asdict(self)
        d["axes_dim"] = list(self.axes_dim)
        if self.grad_ckpt_settings is not None:
            d["grad_ckpt_settings"] = list(self.grad_ckpt_settings)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> MMDiTConfig:
        """Build from a dict of field names (ours or Open-Sora's); unknown keys are errors."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names - REFERENCE_ONLY_KEYS)
        if unknown:
            raise UsageError(
                f"{source}: unknown MMDiTConfig field(s) {unknown}; allowed: {sorted(names)}"
            )
        return cls(**{k: v for k, v in data.items() if k in names})
