"""Sequence parallelism (DeepSpeed-Ulysses) for the MMDiT's joint text + video attention.

`[launcher] sequence_parallel = N` splits one sample's video tokens across N ranks (an SP
group); every rank holds all text tokens. Outside attention every op is token-local, so each rank
runs the blocks on its shard. Around each attention call the ranks trade a sequence split for a
head split (an all-to-all), attend over the whole sequence with H/N heads, and trade back.

Why the all-to-all is written here on `torch.distributed` and not with DeepSpeed's
`deepspeed.sequence.layer.DistributedAttention`: that class all-to-alls q, k and v of the
*whole* sequence, so the replicated text tokens would be exchanged N times and enter attention N
times. Here (as xDiT and diffusers do for Flux) only the video part goes through the all-to-all;
each rank takes its own H/N heads of the text tokens locally, and after attention the text
output's heads are all-gathered (text enters attention once). DeepSpeed still runs the engine,
ZeRO and the data-parallel gradient reduction.

Any token count works: the video tokens are padded with zeros to a multiple of N (the pads sit at
the end of the global sequence); after the all-to-all the pads are dropped before attention, so
the attention sees exactly the single-rank sequence and a pad's output is zero.

Shapes: B batch, H heads, hd head dim, L_txt text tokens, L_img video tokens (unpadded),
L_loc = ceil(L_img / N) video tokens per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from einops import rearrange

from vidcli.errors import UsageError
from vidcli_kernels.attention import attention


def valid_sizes(world: int, heads: int) -> list[int]:
    """SP sizes that divide both the world size and the head count (1 = off included)."""
    return [n for n in range(1, heads + 1) if heads % n == 0 and world % n == 0]


def check_size(size: int, world: int, heads: int, option: str = "launcher.sequence_parallel"):
    """Refuse (UsageError, exit 2) an SP size that does not divide the world size or the heads."""
    if size == 1 or (world % size == 0 and heads % size == 0):
        return
    choices = ", ".join(str(n) for n in valid_sizes(world, heads) if n > 1) or "none"
    raise UsageError(
        f"{option} = {size} must divide the world size ({world} ranks) and the DiT's "
        f"{heads} heads; valid values for {world} ranks: {choices}"
    )


@dataclass
class Layout:
    """The token layout of the current forward pass, set by `MMDiT.embed`."""

    txt_len: int
    """L_txt, replicated on every rank."""
    img_len: int
    """L_img of the whole (unpadded) video sequence."""


@dataclass
class SequenceParallel:
    """One rank's view of its SP group: how to shard, gather and attend."""

    group: dist.ProcessGroup | None
    size: int
    rank: int
    """This rank's index inside the group (its shard)."""
    gather_grad_scale: float = 1.0
    """The gathered output's backward multiplies this rank's gradient by this. train-dit sets the
    SP size: DeepSpeed averages gradients over every rank, while the ranks of a group hold parts
    (not copies) of one sample's gradient, which must add up."""
    layout: Layout | None = field(default=None, repr=False)
    sent_bytes: int = 0
    """Bytes this rank has sent to the others so far (all-to-alls and gathers, both passes)."""

    def local_len(self, length: int) -> int:
        """L_loc for a sequence of `length` tokens."""
        return math.ceil(length / self.size)

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's tokens: (B, L, ...) -> (B, L_loc, ...), zero-padded at the sequence's end."""
        local = self.local_len(x.shape[1])
        pad = local * self.size - x.shape[1]
        if pad:
            x = torch.cat((x, x.new_zeros(x.shape[0], pad, *x.shape[2:])), dim=1)
        return x[:, self.rank * local : (self.rank + 1) * local]

    def valid(self, local: int, device: torch.device) -> torch.Tensor:
        """(L_loc,) bool: which of this rank's tokens are real video tokens, not pads."""
        assert self.layout is not None, "embed() sets the layout before any block runs"
        index = torch.arange(self.rank * local, (self.rank + 1) * local, device=device)
        return index < self.layout.img_len

    def token_weights(self, length: int, device: torch.device) -> torch.Tensor:
        """(length,) 1 for the tokens this rank counts in a sum over the whole sequence, else 0.

        `length` is L_loc (own video shard: pads get 0) or L_txt + L_loc (the replicated text
        counts on rank 0 only).
        """
        assert self.layout is not None
        n_txt = length - self.local_len(self.layout.img_len)
        text = torch.full((n_txt,), float(self.rank == 0), device=device)
        return torch.cat((text, self.valid(length - n_txt, device).float()))

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The whole video sequence on every rank: (B, L_loc, C) -> (B, L_img, C), pads dropped.

        Backward: this rank's slice of the gradient, times `gather_grad_scale`.
        """
        assert self.layout is not None
        return _GatherSequence.apply(x, self)[:, : self.layout.img_len]

    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over [text; whole video] for this rank's tokens (RoPE already applied).

        q, k, v: (B, H, L_txt + L_loc, hd) -> (B, H, L_txt + L_loc, hd)
        """
        assert self.layout is not None
        n_txt, n_img = self.layout.txt_len, self.layout.img_len
        heads = q.shape[1] // self.size
        mine = slice(self.rank * heads, (self.rank + 1) * heads)

        def whole(t: torch.Tensor) -> torch.Tensor:
            # Own heads of the (replicated) text, then the gathered video without its pads.
            video = _SeqToHeads.apply(t[:, :, n_txt:], self)[:, :, :n_img]
            return torch.cat((t[:, mine, :n_txt], video), dim=2)

        out = attention(whole(q), whole(k), whole(v))  # (B, H/N, L_txt + L_img, hd)
        local = q.shape[2] - n_txt
        video = out[:, :, n_txt:]
        pad = local * self.size - n_img
        if pad:
            video = torch.cat((video, video.new_zeros(*video.shape[:2], pad, video.shape[3])), 2)
        txt = _GatherHeads.apply(out[:, :, :n_txt], self)
        return torch.cat((txt, _HeadsToSeq.apply(video, self)), dim=2)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over the group (no autograd): what policies deciding from shards compare."""
        value = value.clone()
        dist.all_reduce(value, group=self.group)
        return value


def _all_gather(x: torch.Tensor, sp: SequenceParallel, dim: int) -> torch.Tensor:
    """Every rank's `x` concatenated along `dim` in rank order."""
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(sp.size)]
    dist.all_gather(parts, x, group=sp.group)
    sp.sent_bytes += x.nbytes * (sp.size - 1)
    return torch.cat(parts, dim=dim)


def _all_to_all(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """(N, ...) -> (N, ...): chunk n goes to rank n, chunk n of the result came from rank n."""
    x = x.contiguous()  # a rearranged view: chunk n must be contiguous memory
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=sp.group)
    sp.sent_bytes += x.nbytes * (sp.size - 1) // sp.size  # its own chunk stays
    return out


def _seq_to_heads(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """(B, H, L_loc, hd) -> (B, H/N, N·L_loc, hd): own heads of every rank's tokens."""
    chunks = rearrange(x, "b (n h) l d -> n b h l d", n=sp.size)
    return rearrange(_all_to_all(chunks, sp), "n b h l d -> b h (n l) d")


def _heads_to_seq(x: torch.Tensor, sp: SequenceParallel) -> torch.Tensor:
    """(B, H/N, N·L_loc, hd) -> (B, H, L_loc, hd): the inverse of `_seq_to_heads`."""
    chunks = rearrange(x, "b h (n l) d -> n b h l d", n=sp.size)
    return rearrange(_all_to_all(chunks, sp), "n b h l d -> b (n h) l d")


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp = sp
        return _seq_to_heads(x, sp)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, ctx.sp), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp = sp
        return _heads_to_seq(x, sp)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, ctx.sp), None


class _GatherHeads(torch.autograd.Function):
    """(B, H/N, L, hd) -> (B, H, L, hd). The result is replicated but each rank's gradient of it
    is only its own shard's part, so the backward sums over the group before slicing."""

    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp = sp
        return _all_gather(x, sp, dim=1)

    @staticmethod
    def backward(ctx, grad):
        sp = ctx.sp
        grad = grad.contiguous()
        dist.all_reduce(grad, group=sp.group)
        sp.sent_bytes += grad.nbytes * (sp.size - 1) // sp.size * 2  # ring: reduce + gather
        return grad.chunk(sp.size, dim=1)[sp.rank], None


class _GatherSequence(torch.autograd.Function):
    """(B, L_loc, C) -> (B, N·L_loc, C); backward: own slice x `gather_grad_scale`."""

    @staticmethod
    def forward(ctx, x, sp):
        ctx.sp = sp
        return _all_gather(x, sp, dim=1)

    @staticmethod
    def backward(ctx, grad):
        sp = ctx.sp
        return grad.chunk(sp.size, dim=1)[sp.rank] * sp.gather_grad_scale, None


def exchange_elements(rows: int, img_tokens: int, txt_tokens: int, hidden: int, size: int) -> int:
    """Elements one rank's buffers hold during one attention call (times the dtype's size for
    bytes): q, k, v of its video shard sent and received, the output sent back and
    received, and the text output's heads gathered. rows: B of the call."""
    local = math.ceil(img_tokens / size)
    return 8 * rows * local * hidden + rows * txt_tokens * hidden


def sent_elements(rows: int, img_tokens: int, txt_tokens: int, hidden: int, size: int) -> int:
    """Elements one rank sends in one attention call (times the dtype's size): the (N-1)/N of
    q, k, v and the output that leave it, and its text heads to the N-1 others."""
    local = math.ceil(img_tokens / size)
    return (
        4 * rows * local * hidden * (size - 1) // size
        + rows * txt_tokens * hidden * (size - 1) // size
    )


def traffic(
    config, rows: int, img_tokens: int, txt_tokens: int, size: int, dtype_bytes: int
) -> dict[str, int]:
    """What one rank of an SP group handles per DiT forward: its tokens and the bytes its
    all-to-alls send (every double and single block attends once; a training step's backward
    sends as much again). config: the MMDiTConfig."""
    calls = config.depth + config.depth_single_blocks
    sent = sent_elements(rows, img_tokens, txt_tokens, config.hidden_size, size)
    return {
        "image_tokens_per_rank": math.ceil(img_tokens / size),
        "text_tokens_per_rank": txt_tokens,
        "all_to_all_bytes_per_forward": calls * sent * dtype_bytes,
    }


def token_share(img_tokens: int, txt_tokens: int, size: int) -> float:
    """The fraction of a sample's activations one rank holds: its video shard plus all text
    (activations grow linearly with tokens when attention does not materialise its scores)."""
    return (txt_tokens + math.ceil(img_tokens / size)) / (txt_tokens + img_tokens)


def build(size: int, heads: int, gather_grad_scale: float = 1.0) -> SequenceParallel | None:
    """This rank's SP group (consecutive ranks g·N .. g·N+N-1) after `check_size`; None for N = 1.

    Every rank must call it (each `new_group` is collective).
    """
    if size == 1:
        return None
    world, rank = dist.get_world_size(), dist.get_rank()
    check_size(size, world, heads)
    mine = None
    for first in range(0, world, size):
        group = dist.new_group(list(range(first, first + size)))
        if first <= rank < first + size:
            mine = group
    return SequenceParallel(mine, size, rank % size, gather_grad_scale)


def data_rank(rank: int, world: int, size: int) -> tuple[int, int]:
    """(data-parallel rank, data-parallel size): the ranks of an SP group read the same batch."""
    return rank // size, world // size
