"""Attention dispatch: the SDPA path against the closed-form softmax reference."""

from __future__ import annotations

import pytest
import torch

from vidcli_kernels.attention import attention, attention_backend, attention_reference


def qkv(B=2, heads=3, L=17, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, heads, L, d, generator=g).to(dtype) for _ in range(3)]


def test_sdpa_matches_reference_on_cpu():
    q, k, v = qkv()
    assert attention_backend(q) == "sdpa"
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v), atol=1e-5, rtol=0)


def test_reference_is_softmax_attention():
    q, k, v = qkv(B=1, heads=1, L=5, d=4)
    # identical keys: every query averages the values uniformly
    k_same = k[:, :, :1].expand_as(k)
    torch.testing.assert_close(
        attention_reference(q, k_same, v), v.mean(dim=2, keepdim=True).expand_as(v)
    )
    # one dominant key: attention picks its value
    k_hot = torch.zeros_like(k)
    k_hot[..., 2, 0] = 100.0
    q_hot = torch.zeros_like(q)
    q_hot[..., 0] = 1.0
    torch.testing.assert_close(attention_reference(q_hot, k_hot, v), v[:, :, 2:3].expand_as(v))


def test_bf16_close_to_reference():
    q, k, v = qkv(dtype=torch.bfloat16)
    out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), attention_reference(q, k, v).float(), atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_backends_match_reference():
    q, k, v = (t.cuda() for t in qkv(L=257, d=128, dtype=torch.bfloat16))
    torch.testing.assert_close(
        attention(q, k, v).float(), attention_reference(q, k, v).float(), atol=2e-2, rtol=0
    )
