"""Tiny random models of the real classes, saved as folders the loaders accept."""

from pathlib import Path

import torch

from vidcli.models.text import _bundled_minilm_dir


def save_tiny_t5_clip(root: Path):
    """Tiny T5EncoderModel and CLIPTextModel folders under root/t5 and root/clip (MiniLM tokenizer).

    Returns (t5 model, clip model, tokenizer).
    """
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(_bundled_minilm_dir(), local_files_only=True)
    vocab = tokenizer.vocab_size
    torch.manual_seed(0)
    t5 = T5EncoderModel(
        T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=tokenizer.sep_token_id,  # pooler_output reads the first [SEP]
        )
    )
    for name, model in (("t5", t5), ("clip", clip)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return t5.eval(), clip.eval(), tokenizer


def tiny_cfg_dit(
    steps: int,
    shape: tuple[int, int, int, int, int],
    text_tokens: int = 5,
    hidden_size: int = 32,
    single_blocks: int = 2,
):
    """A tiny video-layout MMDiT with i2v conditioning, seeded inputs for `shape` = (N, C, T, H, W)
    latents with their negative-prompt rows, and the inference schedule of `steps` steps.

    Returns (model, inputs, schedule); the cache and plan tests run CFG sampling on it.
    """
    from vidcli import flow
    from vidcli.models.mmdit.config import MMDiTConfig
    from vidcli.models.mmdit.model import MMDiT

    n, c, t, h, w = shape
    torch.manual_seed(0)
    cfg = MMDiTConfig(
        in_channels=c * 4,
        vec_in_dim=8,
        context_in_dim=12,
        hidden_size=hidden_size,
        num_heads=2,
        depth=2,
        depth_single_blocks=single_blocks,
        axes_dim=(4, 6, 6),
        cond_embed=True,
        fused_qkv=False,
        use_liger_rope=True,
    )
    model = MMDiT(cfg).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        noise=torch.randn(n, c, t, h, w, generator=g),
        txt=torch.randn(n, text_tokens, 12, generator=g),
        y_vec=torch.randn(n, 8, generator=g),
        neg_txt=torch.randn(1, text_tokens, 12, generator=g),
        neg_y_vec=torch.randn(1, 8, generator=g),
    )
    return model, inputs, flow.inference_schedule(steps, h * w // 4, t)


# A Reducio-VAE small enough for CPU tests: 4-frame clips, ×2 in time, ×2 in space, 4 latent
# channels; one fusion block at full resolution reads content level 0.
MICRO_REDUCIO = {
    "embed_dim": 4,
    "ddconfig": {
        "ch": 32,
        "ch_in": 32,
        "ch_mult": [1, 1],
        "ch_fuse": [-1, 0],
        "num_res_blocks": 1,
        "temp_res": 4,
        "f_t": 1,
        "z_channels": 4,
    },
    "ddconfig_2d": {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1},
}


def micro_reducio():
    """A seeded micro Reducio-VAE (`reducio-tiny` resized by MICRO_REDUCIO), in eval mode."""
    from vidcli.models import build_autoencoder

    torch.manual_seed(0)
    return build_autoencoder("reducio-tiny", **MICRO_REDUCIO).eval()
