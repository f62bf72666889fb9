"""benchmarks/train_throughput.py: throughput counted after the warm-up steps only, over latents
spread across several shards."""

import importlib.util
from pathlib import Path

import pytest
import torch

from vidcli.data.datasets import LatentDataset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_window_rate_excludes_the_warmup_steps(script):
    # Step 1 carries the start-up (10 s); steps 3-5 take 0.5, 0.25 and 0.25 s for 2 samples.
    rates = {1: 0.2, 2: 2.0, 3: 4.0, 4: 8.0, 5: 8.0}
    records = [
        {"step": step, "samples_per_s": rate, "tokens_per_s": 16 * rate}
        for step, rate in rates.items()
    ]
    got = script.window_rate(records, warmup=2, samples_per_step=2)
    assert got["steps"] == 3 and got["seconds"] == pytest.approx(1.0)
    assert got["samples_per_s"] == pytest.approx(6.0)  # 6 samples in 1 s
    assert got["tokens_per_s"] == pytest.approx(96.0)  # 16 tokens per sample
    with pytest.raises(ValueError, match="no logged step after the 5 warm-up steps"):
        script.window_rate(records, warmup=5, samples_per_step=2)


def test_latents_are_spread_over_several_shards(script, tmp_path):
    script.write_shards(tmp_path, (4, 2, 2, 2), shards=3, rows_per_shard=2, text_tokens=4)
    dataset = LatentDataset(tmp_path)
    assert [p.name for p in dataset.shards] == [f"latents-0000{i}.parquet" for i in range(3)]
    assert len(dataset) == 6 and {s for s, _ in dataset.rows} == {0, 1, 2}
    items = [dataset[i] for i in range(6)]
    assert [item["index"] for item in items] == list(range(6))
    assert items[0]["latent"].shape == (4, 2, 2, 2)
    assert items[0]["text_tokens"].shape == (4, script.TEXT_DIM)
    assert not torch.equal(items[0]["latent"], items[5]["latent"])
