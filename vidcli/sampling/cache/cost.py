"""What one DiT block costs, split into the parts a caching policy can skip, for the "blocks
computed" count of cached sampling and `vidcli benchmark --caching`.

FLOPs as `MMDiT.forward_flops` counts them: a linear layer costs 2 FLOPs per weight per token, and
attention's core 4·D per (query, key) pair (q·k and the weighted sum of v, all heads). A double
block and a single block cost the same, (4·D² + 2·D·M) weights per token plus the L² core, where
L = text + image tokens, D = hidden size, M = MLP width. At video lengths the core dominates
(L = 6·D makes it half the block), so skipping attention saves far more than its projections, and
merging or windowing tokens saves quadratically.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockCost:
    """Each part's FLOPs as a fraction of one whole block's, for one call's token counts."""

    double_attention: float
    """q, k, v and proj of both streams plus the joint attention core."""
    img_mlp: float
    txt_mlp: float
    single_qkv: float
    """The q, k, v rows of a single block's linear1."""
    attention_core: float
    """softmax(q kᵀ) v over all L² pairs."""
    single_mlp_in: float
    """The MLP rows of a single block's linear1."""
    single_merge: float
    """A single block's linear2 over [attention; GELU(MLP)]."""

    @classmethod
    def of(cls, hidden: int, mlp: int, txt_tokens: int, img_tokens: int) -> BlockCost:
        """The shares for a call with `txt_tokens` + `img_tokens` tokens per row."""
        tokens = txt_tokens + img_tokens
        core = attention_core_flops(hidden, tokens)
        total = 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + core
        return cls(
            double_attention=(2 * tokens * 4 * hidden * hidden + core) / total,
            img_mlp=2 * img_tokens * 2 * hidden * mlp / total,
            txt_mlp=2 * txt_tokens * 2 * hidden * mlp / total,
            single_qkv=2 * tokens * 3 * hidden * hidden / total,
            attention_core=core / total,
            single_mlp_in=2 * tokens * hidden * mlp / total,
            single_merge=2 * tokens * (hidden + mlp) * hidden / total,
        )


def attention_core_flops(hidden: int, tokens: int, keys: int | None = None) -> float:
    """FLOPs of softmax(q kᵀ) v for `tokens` queries over `keys` keys (default: the same)."""
    return 4.0 * hidden * tokens * (tokens if keys is None else keys)
