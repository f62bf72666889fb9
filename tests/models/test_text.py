"""Text encoders against the transformers / sentence-transformers models they wrap."""

import shutil

import pytest
import torch
from tiny_models import save_tiny_t5_clip
from torch.nn import functional as F

from vidcli.errors import UsageError
from vidcli.models.text import (
    TextEncoderConfig,
    _bundled_minilm_dir,
    build_text_encoder,
)

PROMPTS = ["a red kite over the sea", "", "a cat. 24 FPS. 4 motion score."]


@pytest.fixture(scope="module")
def minilm():
    torch.set_num_threads(1)
    return build_text_encoder(TextEncoderConfig(minilm_max_length=32, cache_size=8))


def count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


def test_minilm_matches_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(_bundled_minilm_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(PROMPTS, convert_to_tensor=True, normalize_embeddings=True)
    out = minilm.encode(PROMPTS)
    assert out.pooled.shape == (3, 384)
    torch.testing.assert_close(out.pooled, expected, atol=1e-5, rtol=1e-4)


def test_minilm_tokens_are_hidden_states_with_closed_form_pooling(minilm):
    out = minilm.encode(PROMPTS)
    assert out.tokens.shape == (3, 32, 384) and out.mask.shape == (3, 32)
    assert out.mask.dtype == torch.bool
    # "" is [CLS] [SEP]: two real tokens, the rest padding.
    assert out.mask.sum(1)[1].item() == 2
    for i, prompt in enumerate(PROMPTS):
        batch = minilm.tokenizer([prompt], return_tensors="pt")  # unpadded
        hidden = minilm.model(**batch).last_hidden_state[0]
        n = hidden.shape[0]
        torch.testing.assert_close(out.tokens[i, :n], hidden, atol=1e-5, rtol=1e-4)
        assert out.mask[i, :n].all() and not out.mask[i, n:].any()
        torch.testing.assert_close(
            out.pooled[i], F.normalize(hidden.mean(0), dim=0), atol=1e-5, rtol=0
        )


def test_minilm_truncates_to_max_length(minilm):
    out = minilm.encode(["word " * 100])
    assert out.tokens.shape == (1, 32, 384) and out.mask.all()


def test_cache_skips_the_model_and_returns_equal_values():
    encoder = build_text_encoder(TextEncoderConfig(minilm_max_length=16, cache_size=2))
    calls = count_forwards(encoder.model)
    first = encoder.encode(["a dog", "a cat"])
    assert calls[0] == 1
    again = encoder.encode(["a cat", "a dog", "a cat"])
    assert calls[0] == 1
    torch.testing.assert_close(again.tokens[1], first.tokens[0], atol=0, rtol=0)
    torch.testing.assert_close(again.pooled[0], first.pooled[1], atol=0, rtol=0)
    torch.testing.assert_close(again.pooled[2], first.pooled[1], atol=0, rtol=0)
    encoder.encode(["a bird"])  # evicts the least recently used ("a dog" was used before "a cat")
    assert calls[0] == 2
    encoder.encode(["a cat"])
    assert calls[0] == 2
    encoder.encode(["a dog"])
    assert calls[0] == 3


def test_deterministic_without_cache():
    encoder = build_text_encoder(TextEncoderConfig(minilm_max_length=16, cache_size=0))
    calls = count_forwards(encoder.model)
    a = encoder.encode(["", "a boat"])
    b = encoder.encode(["", "a boat"])
    assert calls[0] == 2
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)


# --- t5-clip on tiny random models of the same transformers classes ------------------------------


@pytest.fixture(scope="module")
def tiny_t5_clip(tmp_path_factory):
    """Tiny T5EncoderModel and CLIPTextModel folders, both with MiniLM's (BERT) tokenizer."""
    root = tmp_path_factory.mktemp("text")
    t5, clip, tokenizer = save_tiny_t5_clip(root)
    return root, t5, clip, tokenizer


def test_t5_clip_matches_transformers_models(tiny_t5_clip):
    root, t5, clip, tokenizer = tiny_t5_clip
    config = TextEncoderConfig(
        backend="t5-clip", t5_path=str(root / "t5"), clip_path=str(root / "clip"), t5_max_length=40
    )
    encoder = build_text_encoder(config)
    out = encoder.encode(PROMPTS)
    assert (encoder.token_dim, encoder.pooled_dim) == (32, 24)
    assert out.tokens.shape == (3, 40, 32) and out.pooled.shape == (3, 24)

    t5_batch = tokenizer(PROMPTS, padding="max_length", max_length=40, return_tensors="pt")
    clip_batch = tokenizer(PROMPTS, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        # Open-Sora feeds all tokens without a mask: padding changes the real tokens' features.
        expected_tokens = t5(input_ids=t5_batch["input_ids"]).last_hidden_state
        masked = t5(**t5_batch).last_hidden_state
        expected_pooled = clip(input_ids=clip_batch["input_ids"]).pooler_output
    torch.testing.assert_close(out.tokens, expected_tokens, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(out.tokens[0, :3], masked[0, :3], atol=1e-4)
    torch.testing.assert_close(out.pooled, expected_pooled, atol=1e-6, rtol=1e-5)
    assert torch.equal(out.mask, t5_batch["attention_mask"].bool())
    # pooled is the hidden state at the first [SEP] of each prompt.
    hidden = clip(input_ids=clip_batch["input_ids"]).last_hidden_state
    sep = (clip_batch["input_ids"] == tokenizer.sep_token_id).int().argmax(1)
    torch.testing.assert_close(out.pooled, hidden[torch.arange(3), sep], atol=1e-6, rtol=1e-5)


def test_t5_clip_default_length_is_512(tiny_t5_clip):
    root = tiny_t5_clip[0]
    encoder = build_text_encoder(
        TextEncoderConfig(backend="t5-clip", t5_path=str(root / "t5"), clip_path=str(root / "clip"))
    )
    out = encoder.encode(["", "x " * 600])
    assert out.tokens.shape == (2, 512, 32)
    assert out.mask[0].sum() == 2 and out.mask[1].all()


def test_missing_folders_name_the_path_and_the_download(tmp_path, tiny_t5_clip):
    with pytest.raises(UsageError, match="t5_path is empty") as info:
        build_text_encoder(TextEncoderConfig(backend="t5-clip"))
    assert "vidcli download t5-v1_1-xxl" in info.value.hint
    missing = tmp_path / "nowhere"
    with pytest.raises(UsageError, match=f"clip_path: {missing} has no config.json") as info:
        build_text_encoder(
            TextEncoderConfig(
                backend="t5-clip", t5_path=str(tiny_t5_clip[0] / "t5"), clip_path=str(missing)
            )
        )
    assert "vidcli download clip-vit-large-patch14" in info.value.hint
    with pytest.raises(UsageError, match=r"minilm_path: .* has no config\.json"):
        build_text_encoder(TextEncoderConfig(minilm_path=str(missing)))


def test_folder_without_safetensors_is_a_usage_error(tmp_path, tiny_t5_clip):
    broken = tmp_path / "t5"
    shutil.copytree(tiny_t5_clip[0] / "t5", broken)
    for weights in broken.glob("*.safetensors"):
        weights.unlink()
    config = TextEncoderConfig(
        backend="t5-clip", t5_path=str(broken), clip_path=str(tiny_t5_clip[0] / "clip")
    )
    with pytest.raises(UsageError, match=f"t5_path: cannot load {broken}"):
        build_text_encoder(config)


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="minilm_max_length must be in \\[2, 512\\], got 1000"):
        build_text_encoder(TextEncoderConfig(minilm_max_length=1000))
    with pytest.raises(UsageError, match="cache_size must be >= 0, got -1"):
        build_text_encoder(TextEncoderConfig(cache_size=-1))
