"""Run-time state the DiT's weights and activations leave out: what a sampling run keeps between
denoiser calls (a caching method's stored outputs, sparse attention's residuals).

The byte counts follow what each policy in `vidcli.sampling.cache` stores per call, for B rows
(every CFG branch of every prompt: `put_rows` keeps the widest layout seen), L_img image and
L_txt text tokens of width D, in the compute dtype:

| method | stored per row | |
| --- | --- | --- |
| uniform | the velocity tokens | L_img·C_out |
| teacache, adacache, fbcache | two stack-level tensors (input/probe and residual) | 2·L_img·D |
| taylorseer-lite | the stack residual and its `order` differences | (order+1)·L_img·D |
| smoothcache | each module's output: double attn, img/txt MLPs; single out | (2·n_d+n_s)·L·D |
| taylorseer | smoothcache's modules, each with `order` differences | (order+1)·(2·n_d+n_s)·L·D |
| toca | per block: attention, MLP output and input, fp32 token ages | (n_d+n_s)·L·(3·D+4 B) |
| ditfastattn | per attention layer: its output | (n_d+n_s)·L·D |

with L = L_img + L_txt, n_d double and n_s single blocks. Sparse attention with residual sharing
(`[sample] sparse_residual`) keeps full - sparse per attention layer: (n_d+n_s)·L·D per row.
"""

from __future__ import annotations

from vidcli.plans.sizes import GB
from vidcli.recipe import Recipe, SampleSection

TAYLOR_ORDER = 1
"""`TaylorSeer` / `TaylorSeerLite`'s default order (the one `build_policy` builds)."""
AGE_BYTES = 4
"""ToCa's per-token age is a float32 tensor whatever the compute dtype."""
# Stack-level caches: two tensors of (B, L_img, D) (teacache: block 0's modulated input and the
# stack residual; adacache: the residual and its mid-depth probe; fbcache: block 0's residual and
# the tail residual).
STACK_PAIRS = ("teacache", "adacache", "fbcache")


def cache_method(sample: SampleSection) -> str:
    """The `[sample] cache` method name ("none" when off)."""
    from vidcli.sampling.cache import parse_cache

    return parse_cache(sample.cache, "[sample] cache").method


def cache_state_bytes(
    method: str,
    rows: int,
    image_tokens: int,
    text_tokens: int,
    width: int,
    blocks: tuple[int, int],
    out_channels: int,
    element: int,
) -> int:
    """Bytes a caching method keeps between denoiser calls (table in the module doc).

    blocks: (double, single) block counts; element: bytes per value of the compute dtype.
    """
    double, single = blocks
    tokens = image_tokens + text_tokens
    stack = rows * image_tokens * width * element  # one (B, L_img, D) tensor
    modules = rows * tokens * width * element * (2 * double + single)
    match method:
        case "none":
            return 0
        case "uniform":
            return rows * image_tokens * out_channels * element
        case "taylorseer-lite":
            return (TAYLOR_ORDER + 1) * stack
        case "smoothcache":
            return modules
        case "taylorseer":
            return (TAYLOR_ORDER + 1) * modules
        case "toca":
            return (double + single) * rows * tokens * (3 * width * element + AGE_BYTES)
        case "ditfastattn":
            return (double + single) * rows * tokens * width * element
    if method in STACK_PAIRS:
        return 2 * stack
    raise ValueError(f"no state size for caching method {method!r}")


def sparse_residual_bytes(
    sample: SampleSection, rows: int, tokens: int, width: int, layers: int, element: int
) -> int:
    """Bytes of sparse attention's cached full-minus-sparse outputs (one per attention layer)."""
    if sample.sparse_attention == "off" or not sample.sparse_residual:
        return 0
    return layers * rows * tokens * width * element


def refusal(
    recipe: Recipe, state: dict[str, float], smallest: float, gpu_gb: float, batch: int
) -> str:
    """The one line a plan that does not fit ends with: the run-time state to drop, if dropping
    it is enough, else the smallest device."""
    needed = smallest - gpu_gb
    if state["cache"] >= needed:
        return (
            f"[sample] cache = '{recipe.sample.cache}' keeps {state['cache']:.1f} GB on the "
            f"device and does not fit in {gpu_gb:g} GB: set [sample] cache = 'none' or a "
            "stack-level method (teacache, fbcache, taylorseer-lite)"
        )
    if state["sparse"] >= needed:
        return (
            f"sparse attention's residuals take {state['sparse']:.1f} GB and do not fit in "
            f"{gpu_gb:g} GB: set [sample] sparse_residual = false"
        )
    fewer = "; fewer prompts per call (--batch-size 1) need less" if batch > 1 else ""
    return (
        f"does not fit in {gpu_gb:g} GB even with block offload and the smallest AE tiles; "
        f"the smallest device that fits has {smallest:.1f} GB{fewer}"
    )


def run_state(
    recipe: Recipe, dit, rows: int, image_tokens: int, text_tokens: int, size: int
) -> dict[str, float]:
    """GB of sampling state on the device: "cache", "sparse" and their sum "sampling"."""
    c = dit.config
    blocks = (len(dit.double_blocks), len(dit.single_blocks))
    method = cache_method(recipe.sample)
    cache = cache_state_bytes(
        method, rows, image_tokens, text_tokens, c.hidden_size, blocks, c.in_channels, size
    )
    tokens = image_tokens + text_tokens
    sparse = sparse_residual_bytes(recipe.sample, rows, tokens, c.hidden_size, sum(blocks), size)
    return {
        "cache": cache / GB,
        "sparse": sparse / GB,
        "sampling": (cache + sparse) / GB,
    }
