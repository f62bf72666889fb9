"""Per-rank, per-step seeds: no collisions, one function for the loop and the data."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from vidcli.recipe import LauncherSection, Recipe, TrainSection
from vidcli.train import loop, seeds
from vidcli.train.data import step_generator


def test_no_collisions_across_ranks_steps_and_streams():
    # The old formula (seed * 1_000_003 + rank * 7_919 + step) gave rank r at step i the seed
    # of rank r + 1 at step i - 7919: these ranges contain thousands of such pairs.
    triples = itertools.product(range(16), range(9000), (seeds.GLOBAL_RNG, seeds.BATCH))
    values = [seeds.step_seed(7, r, i, s) for r, i, s in triples]
    assert len(set(values)) == len(values)
    assert seeds.step_seed(0, 0, 7919, seeds.BATCH) != seeds.step_seed(0, 1, 0, seeds.BATCH)
    assert all(0 <= v < 2**64 for v in values)


def test_extreme_fields_stay_apart_and_out_of_range_is_refused():
    top_rank, top_index = 2**seeds.RANK_BITS - 1, 2**seeds.INDEX_BITS - 1
    corners = {
        seeds.step_seed(-3, r, i, s)
        for r in (0, top_rank)
        for i in (0, top_index)
        for s in (0, 2**seeds.STREAM_BITS - 1)
    }
    assert len(corners) == 8
    torch.manual_seed(seeds.step_seed(-3, top_rank, top_index, 15))  # torch accepts the range
    for rank, index, stream in ((top_rank + 1, 0, 0), (0, top_index + 1, 0), (0, 0, 16)):
        with pytest.raises(ValueError, match="outside"):
            seeds.step_seed(0, rank, index, stream)
    with pytest.raises(ValueError, match="rank = -1"):
        seeds.step_seed(0, -1, 0, 0)


def test_batch_generator_and_global_rng_get_different_streams():
    gen = step_generator(3, 2, 11)
    assert gen.initial_seed() == seeds.step_seed(3, 2, 11, seeds.BATCH)
    assert gen.initial_seed() != seeds.step_seed(3, 2, 11, seeds.GLOBAL_RNG)
    # The old formula gave both the same seed: their first draws were identical.
    torch.manual_seed(seeds.step_seed(3, 2, 11, seeds.GLOBAL_RNG))
    assert not torch.equal(torch.randn(4), torch.randn(4, generator=gen))


def test_loop_seeds_each_micro_step_from_the_same_function():
    """`_train_step` reseeds the global RNG per micro-step with `step_seed(..., GLOBAL_RNG)`."""
    seen: list[int] = []

    def loss(engine, batch, step):
        seen.append(torch.initial_seed())
        return torch.tensor(1.0), {}

    engine = SimpleNamespace(
        backward=lambda loss: None, step=lambda: None, device=torch.device("cpu")
    )
    spec = loop.StageSpec("toy", torch.nn.Linear(1, 1), lambda index: None, loss, print)
    recipe = Recipe(train=TrainSection(seed=5), launcher=LauncherSection(grad_accum=3))
    assert loop._train_step(spec, recipe, engine, step=4, rank=2) == (1.0, [{}, {}, {}], 0)
    assert seen == [seeds.step_seed(5, 2, index, seeds.GLOBAL_RNG) for index in (12, 13, 14)]


def test_train_ae_frame_choice_has_its_own_stream():
    from vidcli.train.ae import frame_choice_generator

    for seed, index in ((0, 0), (3, 11), (-5, 2**20)):
        choice, batch = frame_choice_generator(seed, index), step_generator(seed, 0, index)
        assert choice.initial_seed() == seeds.step_seed(seed, 0, index, seeds.AE_FRAMES)
        assert choice.initial_seed() != batch.initial_seed()
        # It used rank 0's batch generator: these first draws were the same numbers.
        assert not torch.equal(torch.rand(8, generator=choice), torch.rand(8, generator=batch))
    streams = (seeds.GLOBAL_RNG, seeds.BATCH, seeds.DATA_ORDER, seeds.AE_FRAMES)
    assert len(set(streams)) == len(streams) and max(streams) < 2**seeds.STREAM_BITS
