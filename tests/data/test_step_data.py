"""`[data] buckets` and `[data] workers` in training: bucketed multi-shape batches per rank, read
ahead by DataLoader workers, and every step's batch a function of (seed, rank, step) alone."""

import os

import pytest
import torch

from vidcli.data import stage
from vidcli.data.buckets import BucketBatchSampler
from vidcli.data.synthetic import make_shapes_dataset
from vidcli.recipe import load_recipe
from vidcli.train import ae as train_ae
from vidcli.train import dit as train_dit
from vidcli.train.data import StepLoader, StepRows, epoch_seed, rows_for_step

BUCKETS = {"64px": {"1": [1.0, 3], "8": [1.0, 2]}, "32px": {"8": [1.0, 2]}}
BUCKETS_TOML = '"64px" = {"1" = [1.0, 3], "8" = [1.0, 2]}\n"32px" = {"8" = [1.0, 2]}'


def test_bucket_steps_are_the_samplers_batches_and_pure_in_the_step():
    buckets = ["a"] * 11 + ["b"] * 7 + [None] * 2 + ["c"] * 5
    sizes = {"a": 3, "b": 2, "c": 2}
    per_rank = [StepRows(len(buckets), 0, r, 2, 5, buckets, sizes) for r in range(2)]
    steps = per_rank[0].steps_per_epoch
    assert steps == per_rank[1].steps_per_epoch == 4  # (3 + 3 + 2) batches, 4 per rank
    for rank, rows in enumerate(per_rank):
        for epoch in range(3):
            sampler = BucketBatchSampler(
                buckets, sizes, rank, 2, seed=5, epoch=epoch, epoch_seed=epoch_seed
            )
            assert [rows(epoch * steps + k) for k in range(steps)] == list(sampler)
    # Rank 0 and 1 never share a row within an epoch; every batch is one bucket at its size.
    for epoch in range(2):
        seen = [i for r in per_rank for k in range(steps) for i in r(epoch * steps + k)]
        assert len(seen) == len(set(seen))
    for k in range(3 * steps):
        batch = per_rank[0](k)
        assert len({buckets[i] for i in batch}) == 1 and len(batch) == sizes[buckets[batch[0]]]
    # A resumed run (a fresh object, any order) reads the same rows at the same steps.
    fresh = StepRows(len(buckets), 0, 1, 2, 5, buckets, sizes)
    assert [fresh(k) for k in (9, 2, 9, 0)] == [per_rank[1](k) for k in (9, 2, 9, 0)]
    assert StepRows(len(buckets), 0, 1, 2, 6, buckets, sizes)(0) != per_rank[1](0) or (
        StepRows(len(buckets), 0, 1, 2, 6, buckets, sizes)(1) != per_rank[1](1)
    )


class _Pid:
    def __call__(self, index: int) -> dict:
        return {"index": index, "pid": os.getpid(), "value": torch.tensor([index * 2.0])}


def test_step_loader_reads_in_worker_processes_by_step_index():
    load = StepLoader(_Pid(), workers=2)
    got = [load(i) for i in (0, 1, 2, 3)] + [load(i) for i in (7, 8)] + [load(2)]
    assert [g["index"] for g in got] == [0, 1, 2, 3, 7, 8, 2]
    assert all(g["pid"] != os.getpid() for g in got)
    assert [float(g["value"]) for g in got] == [0, 2, 4, 6, 14, 16, 4]
    assert StepLoader(_Pid(), workers=0)(5)["pid"] == os.getpid()


@pytest.fixture(scope="module")
def two_sizes(tmp_path_factory):
    """Shapes clips of 64 px (8 and 2 frames) and 32 px (8 frames) in one folder."""
    root = tmp_path_factory.mktemp("sizes")
    make_shapes_dataset(root / "large", n=4, size=64, frames=8, fps=8)
    make_shapes_dataset(root / "short", n=3, size=64, frames=2, fps=8)
    make_shapes_dataset(root / "small", n=4, size=32, frames=8, fps=8)
    return root


def write_recipe(path, source, workers=0, latents=""):
    path.write_text(
        f"""
[ae]
preset = "dc-ae-tiny"
tiling = false
[dit]
preset = "mmdit-tiny"
[text]
max_length = 8
[data]
source = "{source}"
latents = "{latents}"
cache_dir = "{path.parent / "cache"}"
workers = {workers}
[data.buckets]
{BUCKETS_TOML}
[train]
batch_size = 1
seed = 3
"""
    )
    return load_recipe(path)


def shapes(batches) -> set[tuple[int, ...]]:
    return {tuple(b.shape) for b in batches}


def test_train_ae_batches_are_bucketed_and_workers_do_not_change_them(tmp_path, two_sizes):
    recipe = write_recipe(tmp_path / "r.toml", two_sizes)
    assert recipe.data.buckets == BUCKETS
    batch_at = train_ae._batches(recipe, 0, 1)
    batches = [batch_at(i) for i in range(12)]
    # 8-frame 64 px clips go to 64px-8, 2-frame ones to 64px-1, 32 px clips to 32px-8.
    assert shapes(batches) == {(3, 3, 1, 64, 64), (2, 3, 8, 64, 64), (2, 3, 8, 32, 32)}
    with_workers = train_ae._batches(write_recipe(tmp_path / "w.toml", two_sizes, workers=2), 0, 1)
    for i in (0, 1, 2, 3, 7, 11, 4):
        assert torch.equal(with_workers(i), batches[i]), i


def test_train_dit_trains_on_bucketed_latents_on_the_fly_and_pre_extracted(tmp_path, two_sizes):
    from vidcli.builders import text_encoder_from_section

    recipe = write_recipe(tmp_path / "r.toml", two_sizes)
    text = text_encoder_from_section(recipe.text)
    batch_at, channels, _, _ = train_dit._batches(recipe, text, 0, 1)
    live = [batch_at(i)["latent"] for i in range(10)]
    assert channels == 8 and len(shapes(live)) >= 2  # dc-ae-tiny: 8 channels, /4 time, /32 space
    assert shapes(live) <= {(3, 8, 1, 2, 2), (2, 8, 2, 2, 2), (2, 8, 2, 1, 1)}

    latents = tmp_path / "latents"
    encoded = stage.run_encode(recipe, latents)
    assert encoded.rows == 11
    pre = write_recipe(tmp_path / "pre.toml", two_sizes, workers=1, latents=latents)
    batch_at, _, _, _ = train_dit._batches(pre, text, 0, 1)
    stored = [batch_at(i) for i in range(10)]
    assert shapes(b["latent"] for b in stored) == shapes(live)
    alphas = {tuple(b["latent"].shape[2:]): b["shift_alpha"] for b in stored}
    assert alphas[(2, 2, 2)] == pytest.approx(
        (1 + (2 * 2 // 4 - 256) * 2 / 3840) * 2**0.5
    )  # Open-Sora's shift for T'=2, H'=W'=2


def test_unbucketed_training_refuses_data_of_several_shapes(tmp_path, two_sizes):
    from vidcli.data.section import video_dataset
    from vidcli.errors import UsageError
    from vidcli.train.data import step_rows

    dataset = video_dataset(write_recipe(tmp_path / "r.toml", two_sizes).data)
    with pytest.raises(UsageError, match="set \\[data\\] buckets"):
        step_rows(dataset, None, 2, 0, 1, 0)


def test_cond_dropout_is_gone_but_old_recipes_still_load(tmp_path, caplog, monkeypatch):
    # an older checkpoint's recipe.toml still holds the key: warn and drop it, do not refuse
    from vidcli.console import log

    monkeypatch.setattr(log, "propagate", True)  # the CLI's handler setup turns it off
    path = tmp_path / "r.toml"
    path.write_text("[train]\ncond_dropout = 0.1\nlr = 0.5\n")
    with caplog.at_level("WARNING", logger="vidcli"):
        recipe = load_recipe(path)
    assert recipe.train.lr == 0.5 and not hasattr(recipe.train, "cond_dropout")
    assert "cond_dropout is ignored" in caplog.text


def test_data_order_of_one_run_is_not_another_runs_next_epoch():
    n = 40
    # Epoch 1 of seed 0 and epoch 0 of seed 1 were both shuffled with seed 1.
    second_epoch_of_seed0 = [rows_for_step(s, 1, 0, 1, n, seed=0)[0] for s in range(n, 2 * n)]
    first_epoch_of_seed1 = [rows_for_step(s, 1, 0, 1, n, seed=1)[0] for s in range(n)]
    assert sorted(second_epoch_of_seed0) == sorted(first_epoch_of_seed1) == list(range(n))
    assert second_epoch_of_seed0 != first_epoch_of_seed1
