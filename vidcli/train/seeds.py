"""Per-rank, per-step seeds: one function, used by the step loop and by the data alike.

A training run has one user seed; every rank, micro-step and *stream* (the global torch RNG the
loop reseeds, the generator a batch draws noise and dropout from) needs its own. `step_seed`
packs (rank, index, stream) into disjoint bit fields of a 64-bit word, so two different triples
can never give the same word, then scrambles it with a bijection keyed by the user seed: seeds
of one run never collide, and neighbouring steps do not get neighbouring seeds.
"""

from __future__ import annotations

GLOBAL_RNG = 0
"""Stream of the global torch RNG, reseeded by the loop before each micro-step."""
BATCH = 1
"""Stream of the `torch.Generator` a stage's batch draws from (noise, timesteps, dropout)."""
DATA_ORDER = 2
"""Stream of the data order: epoch e's shuffle uses `step_seed(seed, 0, e, DATA_ORDER)`."""
AE_FRAMES = 3
"""Stream of train-ae's image-or-video choice: step i's uses `step_seed(seed, 0, i, AE_FRAMES)`.

Rank 0 for every rank (all ranks make one choice), yet apart from rank 0's `BATCH` stream."""

STREAM_BITS = 4
RANK_BITS = 20
INDEX_BITS = 64 - STREAM_BITS - RANK_BITS  # 40: a trillion micro-steps
_MASK = (1 << 64) - 1


def step_seed(seed: int, rank: int, index: int, stream: int) -> int:
    """The seed of `stream` on `rank` at micro-step `index` of a run seeded with `seed`.

    Injective in (rank, index, stream) for a fixed `seed`; the result is in [0, 2**64), the range
    `torch.manual_seed` accepts.
    """
    for name, value, bits in (
        ("rank", rank, RANK_BITS),
        ("index", index, INDEX_BITS),
        ("stream", stream, STREAM_BITS),
    ):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"step_seed: {name} = {value} is outside [0, 2**{bits})")
    packed = (index << (RANK_BITS + STREAM_BITS)) | (rank << STREAM_BITS) | stream
    return _mix(packed ^ _mix(seed & _MASK))


def _mix(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit words that spreads every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)
