"""LatentDataset under shuffled reads: decoded row groups are cached (LRU, bounded by bytes)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vidcli.data import latents
from vidcli.data.buckets import BucketBatchSampler
from vidcli.data.datasets import LatentDataset
from vidcli.data.latents import SHARD_SCHEMA, rows_per_group, shard_path
from vidcli.data.parquet import decode_tensor, encode_tensor, write_parquet_atomic
from vidcli.errors import UsageError
from vidcli.train.data import rows_for_step

SHARDS, ROWS = 4, 6  # N = 24 items


def write_shards(folder, row_group_size=None):
    gen = torch.Generator().manual_seed(0)
    for s in range(SHARDS):
        records = []
        for r in range(ROWS):
            i = s * ROWS + r
            record = {"index": i, "path": f"{i}.mp4", "caption": f"clip {i}"}
            record["bucket"] = "a" if i % 3 else "b"
            record |= encode_tensor("latent", torch.randn(4, 2, 3, 3, generator=gen))
            record |= encode_tensor("text_tokens", torch.randn(5, 8, generator=gen))
            record |= encode_tensor("text_mask", torch.arange(5) < 1 + i % 5)
            record |= encode_tensor("text_pooled", torch.randn(8, generator=gen).bfloat16())
            records.append(record)
        table = pa.Table.from_pylist(records, schema=SHARD_SCHEMA)
        write_parquet_atomic(table, shard_path(folder, s), row_group_size)
    return folder


class CountReads:
    """Rows decoded from the shards after construction, whichever pyarrow call reads them."""

    def __init__(self, monkeypatch):
        self.calls = self.rows = 0
        read_table, read_group = pq.read_table, pq.ParquetFile.read_row_group

        def counted_table(*args, **kwargs):
            return self.count(read_table(*args, **kwargs))

        def counted_group(pf, *args, **kwargs):
            return self.count(read_group(pf, *args, **kwargs))

        monkeypatch.setattr(pq, "read_table", counted_table)
        monkeypatch.setattr(pq.ParquetFile, "read_row_group", counted_group)

    def count(self, table):
        self.calls, self.rows = self.calls + 1, self.rows + table.num_rows
        return table


def reference(folder):
    """Every item, decoded from whole shards read in full."""
    items = []
    for s in range(SHARDS):
        for row in pq.read_table(shard_path(folder, s)).to_pylist():
            item = {k: decode_tensor(row, k) for k in SHARD_SCHEMA.names if k + "_shape" in row}
            items.append(item | {"caption": row["caption"], "index": row["index"]})
    return items


def assert_same(item, expected):
    assert item.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert item[key].dtype == value.dtype and torch.equal(item[key], value), key
        else:
            assert item[key] == value, key


def shuffled(n, seed=3):
    """One epoch of the train loop's order (batch 1, one rank): a seeded permutation."""
    return [rows_for_step(i, 1, 0, 1, n, seed)[0] for i in range(n)]


def test_shuffled_pass_decodes_each_shard_once(tmp_path, monkeypatch):
    dataset = LatentDataset(write_shards(tmp_path))
    expected = reference(tmp_path)
    reads = CountReads(monkeypatch)
    order = shuffled(len(dataset))
    assert sorted(order) == list(range(SHARDS * ROWS))
    for index in order:
        assert_same(dataset[index], expected[index])
    # The whole set fits the default cache: K decodes of R rows (one decode per item before).
    assert (reads.calls, reads.rows) == (SHARDS, SHARDS * ROWS)
    for index in shuffled(len(dataset), seed=4):  # a second epoch decodes nothing
        assert_same(dataset[index], expected[index])
    assert reads.calls == SHARDS


def test_bucket_batches_across_shards_decode_each_shard_once(tmp_path, monkeypatch):
    dataset = LatentDataset(write_shards(tmp_path))
    sampler = BucketBatchSampler(dataset.buckets, {"a": 2, "b": 2}, 0, 1, seed=1)
    reads = CountReads(monkeypatch)
    batches = list(sampler)
    assert len({dataset.rows[i][0] for batch in batches for i in batch}) == SHARDS
    for batch in batches:
        for index in batch:
            dataset[index]
    assert reads.calls == SHARDS


def test_cache_is_least_recently_used_and_bounded_by_bytes(tmp_path, monkeypatch):
    write_shards(tmp_path)
    sizes = sorted(
        pq.ParquetFile(shard_path(tmp_path, s)).read_row_group(0).nbytes for s in (0, 1, 2)
    )
    budget = sizes[1] + sizes[2]  # room for any two of shards 0-2, never for all three
    dataset = LatentDataset(tmp_path, cache_bytes=budget)
    reads = CountReads(monkeypatch)
    decoded = []
    # Shards A B A C B A: A, B miss; A hits; C evicts B (A was used later); B evicts A; A misses.
    for shard in (0, 1, 0, 2, 1, 0):
        dataset[shard * ROWS + shard]
        decoded.append(reads.calls)
        assert dataset._cached_bytes <= budget
        assert dataset._cached_bytes == sum(t.nbytes for t in dataset._cache.values())
    assert decoded == [1, 2, 2, 3, 4, 5]


def test_zero_budget_keeps_the_last_group_so_sequential_reads_decode_once(tmp_path, monkeypatch):
    dataset = LatentDataset(write_shards(tmp_path), cache_bytes=0)
    expected = reference(tmp_path)
    reads = CountReads(monkeypatch)
    for index in range(len(dataset)):
        assert_same(dataset[index], expected[index])
    assert reads.calls == SHARDS
    assert len(dataset._cache) == 1


def test_row_groups_bound_what_one_item_decodes(tmp_path, monkeypatch):
    group = 2
    write_shards(tmp_path, row_group_size=group)
    assert pq.read_metadata(shard_path(tmp_path, 0)).num_row_groups == ROWS // group
    dataset = LatentDataset(tmp_path, cache_bytes=0)
    expected = reference(tmp_path)
    reads = CountReads(monkeypatch)
    order = shuffled(len(dataset))
    for index in order:
        assert_same(dataset[index], expected[index])
    # Without a cache each item decodes at most its own group: <= N * g rows (N * R before).
    assert reads.calls <= len(order) and reads.rows <= len(order) * group
    # With room for everything, each of the N / g groups is decoded once.
    dataset = LatentDataset(tmp_path)
    before = reads.calls
    for index in order:
        assert_same(dataset[index], expected[index])
    assert reads.calls - before == SHARDS * ROWS // group


def test_encode_writes_row_groups_of_about_the_target_size(monkeypatch):
    table = pa.table({"x": pa.array([b"\0" * 1000] * 10)})
    per_row = table.nbytes / 10
    assert rows_per_group(table, target_bytes=int(3 * per_row)) == 3
    assert rows_per_group(table, target_bytes=1) == 1
    assert rows_per_group(table.slice(0, 0)) >= 1
    assert latents.ROW_GROUP_BYTES == 16 << 20


def test_workers_get_an_empty_cache_and_bad_budgets_are_refused(tmp_path):
    import pickle

    dataset = LatentDataset(write_shards(tmp_path))
    first = dataset[0]
    copy = pickle.loads(pickle.dumps(dataset))
    assert len(dataset._cache) == 1 and len(copy._cache) == 0 and copy._cached_bytes == 0
    assert_same(copy[0], first)
    with pytest.raises(UsageError, match="cache_bytes must be >= 0, got -1"):
        LatentDataset(tmp_path, cache_bytes=-1)
