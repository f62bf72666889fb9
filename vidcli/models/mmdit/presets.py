"""Named MMDiT configurations: the released Open-Sora 2.0 / Flux models and small CPU-sized ones.

Sources: hpcaitech/Open-Sora @ 7ad6a96 `configs/diffusion/train/*.py`, `configs/diffusion/inference/
{256px,high_compression,t2i2v_768px}.py` (see shared/reference/opensora2-mmdit.md §1, §11).
The small presets take MiniLM-L6 text features (384 wide) for both the token and pooled inputs;
their `in_channels` is a default that callers override with latent_channels * patch_size**2.
"""

from __future__ import annotations

from dataclasses import replace

from vidcli.models.mmdit.config import MMDiTConfig

# Open-Sora 2.0, 11B, HunyuanVideo VAE (16 ch) with patch 2: `Open_Sora_v2.safetensors`.
_OS2_11B = MMDiTConfig(
    in_channels=64,
    vec_in_dim=768,
    context_in_dim=4096,
    hidden_size=3072,
    mlp_ratio=4.0,
    num_heads=24,
    depth=19,
    depth_single_blocks=38,
    axes_dim=(16, 56, 56),
    theta=10_000,
    qkv_bias=True,
    guidance_embed=False,
    cond_embed=True,
    fused_qkv=False,
    use_liger_rope=True,
    patch_size=2,
)

# Small models share one text interface (MiniLM-L6: 384-wide tokens and pooled vector).
_SMALL = dict(
    vec_in_dim=384,
    context_in_dim=384,
    mlp_ratio=4.0,
    theta=10_000,
    qkv_bias=True,
    guidance_embed=False,
    cond_embed=True,
    fused_qkv=False,
    use_liger_rope=True,
    patch_size=1,
    in_channels=32,
)

DIT_PRESETS: dict[str, MMDiTConfig] = {
    "opensora-v2-11b": _OS2_11B,
    # Open-Sora 2.0 re-trained on Video DC-AE f32t4c128 latents with patch 1:
    # `Open_Sora_v2_Video_DC_AE.safetensors` (configs/diffusion/inference/high_compression.py).
    "opensora-v2-hcae": replace(_OS2_11B, in_channels=128, patch_size=1),
    # black-forest-labs FLUX.1-dev, the text-to-image stage of t2i2v: `flux1-dev.safetensors`.
    "flux-dev": replace(
        _OS2_11B, guidance_embed=True, cond_embed=False, fused_qkv=True, use_liger_rope=False
    ),
    # ~0.5M parameters: unit tests.
    "mmdit-tiny": MMDiTConfig(
        hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(8, 12, 12), **_SMALL
    ),
    # ~30M parameters.
    "mmdit-s": MMDiTConfig(
        hidden_size=384,
        num_heads=6,
        depth=4,
        depth_single_blocks=4,
        axes_dim=(16, 24, 24),
        **_SMALL,
    ),
    # ~130M parameters.
    "mmdit-b": MMDiTConfig(
        hidden_size=768,
        num_heads=12,
        depth=4,
        depth_single_blocks=5,
        axes_dim=(16, 24, 24),
        **_SMALL,
    ),
    # ~9M parameters: the bundled demo model, trained on CPU.
    "mmdit-demo": MMDiTConfig(
        hidden_size=256,
        num_heads=4,
        depth=2,
        depth_single_blocks=4,
        axes_dim=(16, 24, 24),
        **_SMALL,
    ),
}
