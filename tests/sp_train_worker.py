"""One rank of the train-dit sequence-parallel gradient check (`tests/test_sequence_parallel.py`
runs it under `torch.distributed.run` with 2 ranks): a train step's loss and the gradients the
DeepSpeed engine reduces with the tokens split across the ranks must equal one process's.

argv: the ZeRO stage (0 keeps whole gradients in `param.grad`, which is what this compares).
"""

import copy
import sys

import torch

from vidcli import sequence_parallel
from vidcli.launch import init_process_group
from vidcli.models.mmdit import MMDiT
from vidcli.models.mmdit.config import MMDiTConfig
from vidcli.recipe import LauncherSection, TrainSection
from vidcli.train.launcher import make_engine


def main(zero_stage: int) -> None:
    _, world = init_process_group()
    config = MMDiTConfig(
        in_channels=4,
        vec_in_dim=8,
        context_in_dim=12,
        hidden_size=32,
        mlp_ratio=2.0,
        num_heads=4,
        depth=1,
        depth_single_blocks=1,
        axes_dim=(2, 2, 4),
        patch_size=1,
    )
    torch.manual_seed(0)
    model = MMDiT(config)
    # 1 x 1 x 11 latent positions: 11 tokens, the second rank holds 5 and a pad.
    latents = torch.randn(2, 4, 1, 1, 11)
    inputs = (latents, torch.tensor([0.2, 0.7]), torch.randn(2, 5, 12), torch.randn(2, 8))
    target = torch.randn_like(latents)

    reference = copy.deepcopy(model)
    ref_loss = (reference.forward_video(*inputs) - target).pow(2).mean()
    ref_loss.backward()

    heads = config.num_heads
    model.use_sequence_parallel(sequence_parallel.build(world, heads, gather_grad_scale=world))
    train = TrainSection(batch_size=2, grad_clip=0.0)
    engine = make_engine(model, train, LauncherSection(zero_stage=zero_stage), lambda step: 1.0)
    loss = (engine.module.forward_video(*inputs) - target).pow(2).mean()
    engine.backward(loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for (name, param), ref in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(param.grad, ref.grad, rtol=1e-5, atol=1e-7, msg=name)


if __name__ == "__main__":
    main(int(sys.argv[1]))
