"""MMDiT: the Open-Sora 2.0 / Flux diffusion transformer (shared/reference/opensora2-mmdit.md).

Shape legend: B batch, C latent channels, T latent frames, H, W latent height/width, p patch size,
L_img = T·(H/p)·(W/p) image tokens, L_txt text tokens, D hidden size, D_txt text width,
D_vec pooled-text width.

Forward: image tokens and text tokens are embedded, the conditioning vector `vec` (timestep,
pooled text, optional distilled guidance) drives adaLN modulation of every block, `depth`
double-stream blocks keep separate weights per stream with one joint attention, then
`depth_single_blocks` single-stream blocks run over [text; image]; the image part is projected
back to the token width (a velocity in rectified flow).

Sequence parallelism (`use_sequence_parallel`, `vidcli.sequence_parallel`): `embed` keeps this
rank's shard of the image tokens (their RoPE angles and condition with them), every block runs on
[all text; own image shard], attention all-to-alls across the group, and `head` gathers the
velocity of the whole sequence, so `forward` returns the same tensor on every rank.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vidcli.errors import ShapeError, UsageError
from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.models.mmdit.layers import (
    TIME_EMBED_DIM,
    DoubleStreamBlock,
    LastLayer,
    MLPEmbedder,
    SingleStreamBlock,
    timestep_embedding,
)
from vidcli.models.mmdit.packing import make_image_ids, pack_latents, unpack_latents
from vidcli.models.mmdit.rope import rope_angles
from vidcli.sequence_parallel import Layout, SequenceParallel
from vidcli_kernels.linear import Linear


class Embedded(NamedTuple):
    """The inputs of the first block: image and text tokens, conditioning vector, RoPE tables."""

    x: torch.Tensor
    ctx: torch.Tensor
    vec: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor


class MMDiT(nn.Module):
    """Multi-modal diffusion transformer; parameter names equal the Open-Sora 2.0 / Flux keys."""

    def __init__(self, config: MMDiTConfig):
        super().__init__()
        if not isinstance(config, MMDiTConfig):
            raise UsageError(f"MMDiT needs an MMDiTConfig, got {type(config).__name__}")
        self.config = config
        c, dim, half_split = config, config.hidden_size, config.use_liger_rope

        self.img_in = Linear(c.in_channels, dim)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, dim)
        self.vector_in = MLPEmbedder(c.vec_in_dim, dim)
        self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, dim) if c.guidance_embed else None
        self.cond_in = Linear(c.cond_channels, dim) if c.cond_embed else None
        self.txt_in = Linear(c.context_in_dim, dim)
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(
                dim, c.num_heads, c.mlp_hidden_dim, c.qkv_bias, c.fused_qkv, half_split
            )
            for _ in range(c.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(dim, c.num_heads, c.mlp_hidden_dim, c.fused_qkv, half_split)
            for _ in range(c.depth_single_blocks)
        )
        self.final_layer = LastLayer(dim, c.in_channels)
        if self.cond_in is not None:
            # Zero init: a freshly added condition branch starts as a no-op (spec §7.4).
            nn.init.zeros_(self.cond_in.weight)
            nn.init.zeros_(self.cond_in.bias)

        self.sequence_parallel: SequenceParallel | None = None
        self.ckpt_double = self.ckpt_single = 0
        if c.grad_ckpt_settings is not None:
            self.set_gradient_checkpointing(*c.grad_ckpt_settings)

    def set_gradient_checkpointing(self, n_double: int | bool, n_single: int | None = None) -> None:
        """Recompute activations of the first `n_double` double and `n_single` single blocks in the
        backward pass. True = all blocks, False = none; `n_single` defaults to `n_double`."""
        if isinstance(n_double, bool):
            enabled = n_double
            n_double = len(self.double_blocks) if enabled else 0
            if n_single is None:
                n_single = len(self.single_blocks) if enabled else 0
        if n_single is None:
            n_single = n_double
        if n_double < 0 or n_single < 0:
            raise UsageError(f"checkpointing counts must be >= 0, got ({n_double}, {n_single})")
        self.ckpt_double, self.ckpt_single = int(n_double), int(n_single)

    def use_sequence_parallel(self, sp: SequenceParallel | None) -> None:
        """Split the image tokens across `sp`'s group from now on (None = one rank again)."""
        from vidcli.sequence_parallel import check_size

        if sp is not None:
            check_size(sp.size, sp.size, self.config.num_heads)
        self.sequence_parallel = sp
        for block in (*self.double_blocks, *self.single_blocks):
            block.sequence_parallel = sp

    def embed(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y_vec: torch.Tensor,
        cond: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> Embedded:
        """Everything before the first block (arguments as in `forward`).

        -> Embedded: x (B, L_img, D), ctx (B, L_txt, D), vec (B, D), cos/sin (B, L_txt + L_img,
        head_dim/2). Caching policies (vidcli/sampling/cache) run the blocks from here themselves.
        Under sequence parallelism L_img is this rank's L_loc (padded shard).
        """
        c = self.config
        if img.ndim != 3 or txt.ndim != 3 or img.shape[-1] != c.in_channels:
            raise ShapeError(
                f"img must be (B, L, {c.in_channels}) and txt (B, L, {c.context_in_dim}); "
                f"got {tuple(img.shape)} and {tuple(txt.shape)}"
            )
        sp = self.sequence_parallel
        if sp is not None:
            sp.layout = Layout(txt_len=txt.shape[1], img_len=img.shape[1])
            img, img_ids = sp.shard(img), sp.shard(img_ids)
            cond = None if cond is None else sp.shard(cond)
        x = self.img_in(img)
        if self.cond_in is not None:
            if cond is None:
                cond = img.new_zeros(*img.shape[:2], c.cond_channels)
            x = x + self.cond_in(cond)
        elif cond is not None:
            raise UsageError(
                "this model has cond_embed=False: it takes no condition, pass cond=None"
            )

        vec = self.time_in(timestep_embedding(timesteps))
        if self.guidance_in is not None:
            if guidance is None:
                raise UsageError("this model has guidance_embed=True: pass guidance (B,)")
            vec = vec + self.guidance_in(timestep_embedding(guidance))
        vec = vec + self.vector_in(y_vec)
        ctx = self.txt_in(txt)

        # Text rows first, as in the reference: text ids are zero, i.e. no rotation.
        ids = torch.cat((txt_ids, img_ids), dim=1)
        cos, sin = rope_angles(ids, c.axes_dim, c.theta, half_split=c.use_liger_rope)

        return Embedded(x, ctx, vec, cos, sin)

    def forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor,
        y_vec: torch.Tensor,
        cond: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity for the image tokens.

        img: (B, L_img, C·p²), img_ids: (B, L_img, 3), txt: (B, L_txt, D_txt),
        txt_ids: (B, L_txt, 3), timesteps: (B,) in [0, 1] (1 = noise), y_vec: (B, D_vec),
        cond: (B, L_img, (C+1)·p²) or None (= all-zero condition, the t2v case); only for
            models with cond_embed,
        guidance: (B,) when guidance_embed
        -> (B, L_img, C·p²)
        """
        x, ctx, vec, cos, sin = self.embed(
            img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance
        )
        for i, block in enumerate(self.double_blocks):
            if i < self.ckpt_double and torch.is_grad_enabled():
                x, ctx = checkpoint(block, x, ctx, vec, cos, sin, use_reentrant=False)
            else:
                x, ctx = block(x, ctx, vec, cos, sin)

        h = torch.cat((ctx, x), dim=1)
        for i, block in enumerate(self.single_blocks):
            if i < self.ckpt_single and torch.is_grad_enabled():
                h = checkpoint(block, h, vec, cos, sin, use_reentrant=False)
            else:
                h = block(h, vec, cos, sin)
        return self.head(h[:, ctx.shape[1] :], vec)

    def head(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """Final adaLN + projection of the image tokens, gathered over the SP group if any.

        x: (B, L_img, D) (this rank's L_loc under SP), vec: (B, D) -> (B, L_img, C·p²) whole.
        """
        out = self.final_layer(x, vec)
        return out if self.sequence_parallel is None else self.sequence_parallel.gather(out)

    def forward_video(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        txt: torch.Tensor,
        y_vec: torch.Tensor,
        cond_latent: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`forward` on unpacked latents: packs with patch_size, builds ids, unpacks.

        latents: (B, C, T, H, W), timesteps: (B,), txt: (B, L_txt, D_txt), y_vec: (B, D_vec),
        cond_latent: (B, C, T, H, W) reference latent on conditioned frames, 0 elsewhere,
        cond_mask: (B, 1, T, H, W) 1 on conditioned frames (both None = no condition),
        guidance: (B,) -> velocity (B, C, T, H, W)
        """
        img, img_ids, txt_ids, cond = self.pack_video(latents, txt, cond_latent, cond_mask)
        out = self.forward(img, img_ids, txt, txt_ids, timesteps, y_vec, cond, guidance)
        return unpack_latents(out, self.config.patch_size, *latents.shape[2:])

    def pack_video(
        self,
        latents: torch.Tensor,
        txt: torch.Tensor,
        cond_latent: torch.Tensor | None = None,
        cond_mask: torch.Tensor | None = None,
    ):
        """`forward`'s token inputs from unpacked latents (arguments as in `forward_video`).

        -> img (B, L_img, C·p²), img_ids (B, L_img, 3), txt_ids (B, L_txt, 3), cond or None
        """
        p = self.config.patch_size
        B, _, T, H, W = latents.shape
        img = pack_latents(latents, p)
        img_ids = make_image_ids(B, T, H // p, W // p, device=latents.device)
        txt_ids = torch.zeros(B, txt.shape[1], 3, device=latents.device)
        cond = None
        if (cond_latent is None) != (cond_mask is None):
            raise UsageError("pass both cond_latent and cond_mask, or neither")
        if cond_latent is not None:
            if self.cond_in is None:
                raise UsageError("this model has cond_embed=False: it takes no image condition")
            cond = pack_latents(torch.cat((cond_mask, cond_latent), dim=1).to(latents.dtype), p)
        return img, img_ids, txt_ids, cond

    def forward_flops(self, num_image_tokens: int, num_text_tokens: int) -> float:
        """Model FLOPs of one forward pass (see `dit_flops`)."""
        return dit_flops(self.config, num_image_tokens, num_text_tokens)


def dit_flops(config: MMDiTConfig, num_image_tokens: int, num_text_tokens: int) -> float:
    """Model FLOPs of one forward pass: 2·P·T + 4·L·D·T² (shared/reference/gpu-anchors.md).

    T = image + text tokens, L = number of blocks, D = hidden size, P = weights of the block matmuls
    one token passes through (each double-block stream sees only its own weights; modulation acts
    on the pooled vector and is left out). Training costs 3x this.
    """
    dim, mlp = config.hidden_size, config.mlp_hidden_dim
    per_double_stream = 4 * dim * dim + 2 * dim * mlp  # q, k, v, proj + MLP in/out
    per_single = dim * (3 * dim + mlp) + (dim + mlp) * dim  # linear1 + linear2
    P = config.depth * per_double_stream + config.depth_single_blocks * per_single
    T = num_image_tokens + num_text_tokens
    L = config.depth + config.depth_single_blocks
    return float(2 * P * T + 4 * L * dim * T * T)
