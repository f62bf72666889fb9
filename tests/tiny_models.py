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
