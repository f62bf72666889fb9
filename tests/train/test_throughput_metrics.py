"""Logged throughput counts the samples each step really read (bucket batch sizes vary)."""

import json
from types import SimpleNamespace

import torch

from vidcli.recipe import LauncherSection, Recipe, TrainSection
from vidcli.train import loop


def sizes(index: int) -> int:
    """Micro-step `index`'s batch size, as with buckets of batch sizes 1, 2 and 3."""
    return 1 + index % 3


def test_samples_per_s_and_samples_seen_count_real_batch_sizes(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock[0])

    def loss(engine, batch, step):
        clock[0] += 1.0  # every micro-step takes one (fake) second
        return batch["latent"].sum() * 0 + 1.0, {}

    def batch_at(index):
        return {"latent": torch.zeros(sizes(index), 2), "generator": torch.Generator()}

    model = torch.nn.Linear(1, 1)
    engine = SimpleNamespace(
        backward=lambda loss: None,
        step=lambda: None,
        device=torch.device("cpu"),
        get_lr=lambda: [0.1],
        save_checkpoint=lambda folder, tag: None,
    )

    def save_weights(state, folder, stem, written=None):
        (folder / f"{stem}.safetensors").write_bytes(b"")

    spec = loop.StageSpec("toy", model, batch_at, loss, save_weights)
    train = TrainSection(
        seed=1, batch_size=2, max_steps=6, log_every=2, ckpt_every=100, output=str(tmp_path)
    )
    recipe = Recipe(train=train, launcher=LauncherSection(grad_accum=2))
    result = loop.train(spec, recipe, engine, rank=0, world=1, resume=None)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # Window w holds micro-steps 4w .. 4w + 3 (2 steps of 2), 4 fake seconds.
    window = [sum(sizes(i) for i in range(4 * w, 4 * w + 4)) for w in range(3)]
    assert window == [7, 8, 9]  # a fixed batch_size * grad_accum counted 8 every time
    assert [r["samples_per_s"] for r in records] == [n / 4 for n in window]
    assert [r["samples_seen"] for r in records] == [7, 15, 24]
    assert result.samples_per_s == 24 / 12


def test_batch_samples_reads_the_leading_size():
    assert loop.batch_samples(torch.zeros(3, 2)) == 3
    assert loop.batch_samples({"generator": torch.Generator(), "latent": torch.zeros(5, 1)}) == 5
    assert loop.batch_samples([torch.tensor(1.0), torch.zeros(2, 4)]) == 2
    assert loop.batch_samples(None) == 0
