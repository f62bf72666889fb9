"""One rank of the MMDiT sequence-parallel check (`tests/test_sequence_parallel.py` runs it under
`torch.distributed.run`): each rank computes the single-rank forward and gradients itself, then
the same with the video tokens split across the group, and asserts they are equal.

argv: T H W (latent frames, height, width; T·H·W prime checks the padding) and `cond` or `t2v`.
"""

import sys

import torch
import torch.distributed as dist

from vidcli import sequence_parallel
from vidcli.models.mmdit import MMDiT
from vidcli.models.mmdit.config import MMDiTConfig


def main(T: int, H: int, W: int, image_condition: bool) -> None:
    dist.init_process_group("gloo")
    world = dist.get_world_size()
    config = MMDiTConfig(
        in_channels=4,
        vec_in_dim=8,
        context_in_dim=12,
        hidden_size=32,
        mlp_ratio=2.0,
        num_heads=2 * world,
        depth=2,
        depth_single_blocks=2,
        axes_dim=(2, 2, 4),
        patch_size=1,
        cond_embed=image_condition,
    )
    torch.manual_seed(0)
    model = MMDiT(config).double()
    latents = torch.randn(2, 4, T, H, W, dtype=torch.float64)
    txt = torch.randn(2, 5, 12, dtype=torch.float64)
    y_vec = torch.randn(2, 8, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    cond = {}
    if image_condition:
        cond = {
            "cond_latent": torch.randn(2, 4, T, H, W, dtype=torch.float64),
            "cond_mask": torch.ones(2, 1, T, H, W, dtype=torch.float64),
        }
        # cond_in starts at zero: give it weights so the condition changes the output.
        torch.nn.init.normal_(model.cond_in.weight)
    target = torch.randn(2, 4, T, H, W, dtype=torch.float64)

    def loss_and_grads():
        model.zero_grad()
        out = model.forward_video(latents, t, txt, y_vec, **cond)
        loss = (out - target).pow(2).mean()
        loss.backward()
        return out.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_out, ref_loss, ref_grads = loss_and_grads()
    model.use_sequence_parallel(sequence_parallel.build(world, config.num_heads))
    out, loss, grads = loss_and_grads()
    for grad in grads.values():  # each rank's backward runs through its own shard's output only
        dist.all_reduce(grad)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-9, atol=1e-12, msg=name)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "cond")
