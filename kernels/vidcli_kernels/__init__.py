"""Optional accelerated kernels for vidcli, imported as `vidcli_kernels`.

Each kernel is a function over tensors with a plain-PyTorch reference beside it that defines
what is correct; the fast path (Triton, flash-attn) is used on CUDA when available.
"""
