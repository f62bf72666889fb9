"""An attention plan for sampling video DiTs: sparse or window attention with residual caching,
and temporal token merging, decided per evaluation.

Install it with `use_attention_plan(plan)` around the sampling loop and call
`plan.begin_evaluation(step)` before each model call; every `attention` call of the model then
goes through `plan(q, k, v)`. Calls are numbered within an evaluation, which identifies the
attention layer (a DiT forward calls its layers in a fixed order).

Per evaluation the plan does one of (DiTFastAttn's WA-RS, see
shared/reference/attention-tokens-solvers.md §5):
- ``dense``: exact attention (the first `dense_steps`, and wherever the dispatcher says the
  sparse path would be slower than dense at this size);
- ``full+residual``: exact attention O_full, plus the sparse O_sparse on the same q, k, v, and
  keeps R = O_full − O_sparse per layer (a step every `full_every`);
- ``sparse``: O_sparse + R of the last full step (or O_sparse alone when `residual` is off);
- ``merged``: Temporal Dimension Token Merging for the first `merge_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vidcli_kernels.attention import dense_attention
from vidcli_kernels.sparse_attention import (
    PathChoice,
    SparsePattern,
    VideoLayout,
    choose_path,
    sparse_attention,
)
from vidcli_kernels.token_merging import merged_attention


@dataclass
class VideoAttentionConfig:
    """What the plan may do; everything off = exact attention."""

    pattern: SparsePattern | None = None
    """Sparse pattern for image tokens, or None."""
    dense_steps: int = 1
    """Steps at the start that always attend densely (they also seed the residual)."""
    full_every: int = 0
    """With `residual`: a full+residual step every this many steps after the dense ones
    (0 = only the dense steps refresh the residual)."""
    residual: bool = True
    """Add the cached full-minus-sparse residual to sparse outputs (DiTFastAttn's WA-RS)."""
    merge_steps: int = 0
    """Steps at the start whose attention merges frame pairs (0 = off)."""
    force_sparse: bool = False
    """Run the sparse path even where the dispatcher would stay dense (fidelity studies, tests)."""


@dataclass
class VideoAttentionPlan:
    """Routes a model's attention calls; see the module docstring."""

    config: VideoAttentionConfig
    grid: tuple[int, int, int]
    """Image token grid (T, H, W) of the video being sampled (latent frames, H/p, W/p)."""
    mode: str = "dense"
    step: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    """How many attention calls took each path, e.g. {"sparse:flex": 40, "dense": 8}."""
    last_choice: PathChoice | None = None
    _call: int = 0
    _residual: dict[int, torch.Tensor] = field(default_factory=dict)

    def begin_evaluation(self, step: int) -> None:
        """Decide the mode of the next model evaluation (all its attention layers)."""
        c, self.step, self._call = self.config, step, 0
        # The last dense step seeds the residual; with full_every = K every K-th step after it
        # refreshes it (DiTFastAttn's plan: full attention at step 0, window + residual after).
        since_seed = step - (c.dense_steps - 1)
        refresh = since_seed == 0 or (c.full_every > 0 and since_seed % c.full_every == 0)
        if step < c.merge_steps and self.grid[0] >= 2:
            self.mode = "merged"
        elif c.pattern is None or since_seed < 0 or (since_seed == 0 and not c.residual):
            self.mode = "dense"
        elif refresh and c.residual:
            self.mode = "full+residual"
        else:
            self.mode = "sparse"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        layer, self._call = self._call, self._call + 1
        T, H, W = self.grid
        layout = VideoLayout(q.shape[2] - T * H * W, T, H, W)
        if self.mode == "merged":
            self._count("merged")
            return merged_attention(q, k, v, layout.text, T)
        if self.mode == "dense":
            return self._dense(q, k, v)
        pattern = self.config.pattern
        self.last_choice = choice = choose_path(q, pattern, layout, force=self.config.force_sparse)
        if choice.path == "dense":  # slower than dense here, or cannot run: exact attention
            return self._dense(q, k, v)
        if self.mode == "full+residual":
            full = self._dense(q, k, v)
            self._residual[layer] = full - sparse_attention(q, k, v, pattern, layout, choice.path)
            return full
        out = sparse_attention(q, k, v, pattern, layout, choice.path)
        self._count(f"sparse:{choice.path}")
        residual = self._residual.get(layer)
        if self.config.residual and residual is not None:
            if residual.shape[0] < out.shape[0]:
                # More CFG rows than at the last full step: refresh this layer's residual.
                full = self._dense(q, k, v)
                self._residual[layer] = full - out
                return full
            # CFG rows are ordered (cond, uncond, ...): fewer rows are a prefix of the cached ones.
            out = out + residual[: out.shape[0]]
        return out

    def _dense(self, q, k, v):
        self._count("dense")
        return dense_attention(q, k, v)

    def _count(self, name: str) -> None:
        self.choices[name] = self.choices.get(name, 0) + 1
