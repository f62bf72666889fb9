"""Run-time state the DiT's weights and activations leave out: what a sampling run keeps between
denoiser calls (a caching method's stored outputs, sparse attention's residuals).

The byte counts follow what each policy in `vidcli.sampling.cache` stores, for B rows (every
CFG branch of every prompt: the widest layout seen), L_img image and L_txt text tokens of width
D, in the compute dtype:

| method | stored | bytes / element |
| --- | --- | --- |
| uniform | the velocity tokens | B·L_img·C_out |
| teacache, adacache, fbcache | two stack-level tensors (input/probe and residual) | 2·B·L_img·D |
| magcache | the stack residual | B·L_img·D |
| easycache | 4 stack-level tensors (+ 3 scalars per CFG row) | 4·B·L_img·D |
| taylorseer-lite | stack residual, `order` differences, per branch | (o+1)·B·L_img·D + N·L_img·D |
| smoothcache | each module's output: double attn, img/txt MLPs; single out | B·M |
| taylorseer | smoothcache's modules, each with `order` differences, per branch | (o+1)·B·M + N·M |
| foca | the last 3 full outputs of every module, per branch | 3·B·M + N·M |
| speca | module outputs and first differences (+ an int64 step per row) | 2·B·M |
| toca | per block: attention, MLP output and input, fp32 token ages | (n_d+n_s)·B·L·(3·D + 4 B) |
| ditfastattn | per attention layer: its output | (n_d+n_s)·B·L·D |

with L = L_img + L_txt, M = (2·n_d+n_s)·L·D, n_d double and n_s single blocks, N prompts per
CFG branch, o = 1. The per-branch methods keep views of a full call's output, so after a call
with fewer branches (guidance oscillation) the older output stays alive beside N new rows.
Sparse attention with residual sharing (`[sample] sparse_residual`) keeps full - sparse per
attention layer: (n_d+n_s)·B·L·D. `tests/test_plan_state.py` checks every row against the
bytes the policies hold during a sampling run.
"""

from __future__ import annotations

from vidcli.plans.sizes import GB
from vidcli.recipe import Recipe, SampleSection

TAYLOR_ORDER = 1
"""`TaylorSeer` / `TaylorSeerLite`'s default order (the one `build_policy` builds)."""
FOCA_HISTORY = 3
"""FoCa keeps the last three full outputs of every module (BDF2 + Heun)."""
EASYCACHE_TENSORS = 4
"""EasyCache's previous input, last full input and output, and their difference."""
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
    prompts: int,
    image_tokens: int,
    text_tokens: int,
    width: int,
    blocks: tuple[int, int],
    out_channels: int,
    element: int,
) -> int:
    """Bytes a caching method keeps between denoiser calls (table in the module doc).

    rows: B of the widest call; prompts: N rows per CFG branch. The per-branch methods keep each
    branch's slice of a full call's output as a view, so after a call with fewer branches
    (guidance oscillation) the older full-width output stays alive beside N new rows.
    blocks: (double, single) block counts; element: bytes per value of the compute dtype.
    """
    double, single = blocks
    tokens = image_tokens + text_tokens

    def stack(r: int) -> int:  # one (r, L_img, D) tensor
        return r * image_tokens * width * element

    def modules(r: int) -> int:  # every module output of the stack for r rows
        return r * tokens * width * element * (2 * double + single)

    per_branch = {  # (held full-width outputs, per-row size)
        "taylorseer": (TAYLOR_ORDER + 1, modules),
        "taylorseer-lite": (TAYLOR_ORDER + 1, stack),
        "foca": (FOCA_HISTORY, modules),
    }
    if method in per_branch:
        count, size = per_branch[method]
        return count * size(rows) + size(prompts)
    match method:
        case "none":
            return 0
        case "uniform":
            return rows * image_tokens * out_channels * element
        case "smoothcache":
            return modules(rows)
        case "toca":
            return (double + single) * rows * tokens * (3 * width * element + AGE_BYTES)
        case "ditfastattn":
            return (double + single) * rows * tokens * width * element
        case "speca":  # widened module outputs and differences; each row's last full step
            return (TAYLOR_ORDER + 1) * modules(rows) + rows * 8
        case "magcache":
            return stack(rows)
        case "easycache":  # and per CFG row: its error budget, rate and full-step count
            return EASYCACHE_TENSORS * stack(rows) + rows * 3 * element
    if method in STACK_PAIRS:
        return 2 * stack(rows)
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
    recipe: Recipe, dit, rows: int, prompts: int, image_tokens: int, text_tokens: int, size: int
) -> dict[str, float]:
    """GB of sampling state on the device: "cache", "sparse" and their sum "sampling".

    rows: B of the widest denoiser call; prompts: N rows per CFG branch."""
    c = dit.config
    blocks = (len(dit.double_blocks), len(dit.single_blocks))
    method = cache_method(recipe.sample)
    cache = cache_state_bytes(
        method, rows, prompts, image_tokens, text_tokens, c.hidden_size, blocks, c.in_channels, size
    )
    tokens = image_tokens + text_tokens
    sparse = sparse_residual_bytes(recipe.sample, rows, tokens, c.hidden_size, sum(blocks), size)
    return {
        "cache": cache / GB,
        "sparse": sparse / GB,
        "sampling": (cache + sparse) / GB,
    }
