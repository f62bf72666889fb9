"""MMDiT's image condition: a model without a cond embedding refuses `cond` rather than
silently sampling without it; a model with one treats None as the all-zero condition."""

import pytest
import torch

from vidcli.errors import UsageError
from vidcli.models.mmdit import build_dit, make_image_ids, pack_latents


def _inputs(model, B=2, T=2, H=4, W=6):
    g = torch.Generator().manual_seed(1)
    p = model.config.patch_size
    C = model.config.in_channels // p**2
    return dict(
        img=pack_latents(torch.randn(B, C, T, H, W, generator=g), p),
        img_ids=make_image_ids(B, T, H // p, W // p),
        txt=torch.randn(B, 5, 12, generator=g),
        txt_ids=torch.zeros(B, 5, 3),
        timesteps=torch.rand(B, generator=g),
        y_vec=torch.randn(B, 10, generator=g),
    )


def _tiny(cond_embed: bool):
    torch.manual_seed(0)
    return build_dit(
        "mmdit-tiny", in_channels=8, context_in_dim=12, vec_in_dim=10, cond_embed=cond_embed
    ).eval()


def test_cond_without_a_cond_embedding_is_an_error():
    model = _tiny(cond_embed=False)
    inputs = _inputs(model)
    cond = torch.ones(*inputs["img"].shape[:2], model.config.cond_channels)
    with torch.no_grad():
        model(**inputs)  # no condition: fine
        with pytest.raises(UsageError, match="cond_embed=False: it takes no condition"):
            model(**inputs, cond=cond)


def test_missing_cond_equals_the_all_zero_condition():
    model = _tiny(cond_embed=True)
    torch.nn.init.normal_(model.cond_in.weight)  # zero-initialised: make the branch matter
    inputs = _inputs(model)
    zeros = torch.zeros(*inputs["img"].shape[:2], model.config.cond_channels)
    ones = torch.ones_like(zeros)
    with torch.no_grad():
        assert torch.equal(model(**inputs), model(**inputs, cond=zeros))
        assert not torch.allclose(model(**inputs), model(**inputs, cond=ones))
