"""Checkpoints that scale: hashed while written, built and verified on one rank, and a lineage.

The unit tests drive `vidcli.train.checkpoint` directly (and, on 2 gloo ranks, the loop's
resume decision); the slow ones train a tiny two-layer model on 2 gloo ranks (torchrun): under
ZeRO 2 through a resume from an earlier step, and under ZeRO 3; and train-ae (DC-AE and
Reducio-VAE) through a resume, its weights hashed as they are written.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
from safetensors.torch import load_file, save_file
from tiny_models import MICRO_REDUCIO, micro_reducio
from tiny_runs import REPO, recipe_args, subprocess_env, tiny_ae_values

from vidcli.errors import UsageError
from vidcli.models import build_autoencoder, load_autoencoder
from vidcli.train import checkpoint as ckpt


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def staged(checkpoints: Path, step: int, lineage: list[str]) -> None:
    """A staged checkpoint whose trainer_state.json records `lineage`."""
    folder = ckpt.staging_dir(checkpoints, step)
    folder.mkdir(parents=True)
    ckpt.write_state(folder, ckpt.TrainerState(step=step, samples_seen=step, lineage=lineage))


def steps(checkpoints: Path) -> list[int]:
    return [int(p.name[5:]) for p in ckpt.complete_checkpoints(checkpoints)]


@pytest.mark.parametrize("zipfile", [False, True])
def test_the_recorded_sha256_is_that_of_the_final_file(tmp_path, monkeypatch, zipfile):
    folder = tmp_path / "step"
    (folder / "deepspeed").mkdir(parents=True)
    written: ckpt.Digests = {}
    engine = TorchCheckpointEngine()
    engine.zipfile_serialization = zipfile
    shard = folder / "deepspeed" / "mp_rank_00_model_states.pt"
    state = {"w": torch.randn(1000), "view": torch.arange(10)[2:7], "step": 3}
    ckpt.HashingCheckpointEngine(engine, folder, written).save(state, str(shard))
    ckpt.write_state(folder, ckpt.TrainerState(step=3, samples_seen=6), written)
    save_file({"w": torch.ones(2)}, str(folder / "model.safetensors"))  # a stage's own writer

    assert sorted(written) == ["deepspeed/mp_rank_00_model_states.pt", "trainer_state.json"]
    for name, entry in written.items():
        assert entry == {"bytes": (folder / name).stat().st_size, "sha256": sha256(folder / name)}
    torch.testing.assert_close(torch.load(shard, weights_only=False)["view"], state["view"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "deepspeed",
        "model.safetensors",
        "trainer_state.json",
    ]  # the temp files were renamed into place

    # The manifest takes those digests as they are: only the file hashed by no writer is read.
    read = []
    real_sha256 = ckpt._sha256
    monkeypatch.setattr(ckpt, "_sha256", lambda path: read.append(path.name) or real_sha256(path))
    ckpt.write_manifest(folder, written)
    assert read == ["model.safetensors"]
    ckpt.verify_manifest(folder)


def test_safetensors_written_while_hashed_load_with_safetensors(tmp_path):
    from safetensors import safe_open

    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=gen),
        "b.bf16": torch.randn(4, 2, generator=gen).bfloat16(),
        "c.half_t": torch.randn(2, 6, generator=gen).half().t(),  # not contiguous
        "d.count": torch.tensor(7),  # 0-dim
        "e.ids": torch.arange(5, dtype=torch.int64),
        "f.mask": torch.tensor([True, False, True]),
        "g.empty": torch.zeros(0, 4),
    }
    written: ckpt.Digests = {}
    path = tmp_path / "model.safetensors"
    ckpt.write_safetensors_hashed(tensors, path, tmp_path, written, {"format": "test"})
    data = path.read_bytes()
    assert written["model.safetensors"] == {
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "test"} and set(f.keys()) == set(tensors)
        for name, want in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and torch.equal(got, want), name


def test_dit_weights_hashed_while_written_are_not_read_back(tmp_path, monkeypatch):
    from vidcli.models.mmdit import build_dit, load_dit
    from vidcli.train.dit_weights import save_dit_weights

    model = build_dit("mmdit-tiny")
    written: ckpt.Digests = {}
    save_dit_weights(model, model.state_dict(), tmp_path, "model", written=written)
    real, read = ckpt._sha256, []
    monkeypatch.setattr(ckpt, "_sha256", lambda path: read.append(path.name) or real(path))
    ckpt.write_manifest(tmp_path, written)
    assert "model.safetensors" not in read and "config.json" in read
    ckpt.verify_manifest(tmp_path)
    loaded = load_dit(tmp_path).state_dict()
    for name, want in model.state_dict().items():
        assert torch.equal(loaded[name], want), name


def safetensors_parts(data: bytes) -> tuple[int, dict | None, list, bytes]:
    """(header length, metadata, [(name, dtype/shape/offsets)] in file order, tensor bytes)."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    return length, header.pop("__metadata__", None), list(header.items()), data[8 + length :]


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}])
def test_safetensors_written_while_hashed_are_the_bytes_safetensors_writes(tmp_path, metadata):
    from safetensors.torch import save

    gen = torch.Generator().manual_seed(0)
    # Names and dtypes interleaved: safetensors orders by dtype (its enum, descending), then name.
    tensors = {
        "a.half": torch.randn(2, 6, generator=gen).half(),
        "b.ids": torch.arange(5, dtype=torch.int64),
        "c.weight": torch.randn(3, 5, generator=gen),
        "d.mask": torch.tensor([True, False, True]),
        "e.bf16": torch.randn(4, 2, generator=gen).bfloat16(),
        "f.weight": torch.randn(7, generator=gen),
        "g.count": torch.tensor(7, dtype=torch.int32),
        "h.f64": torch.randn(2, generator=gen, dtype=torch.float64),
        "i.empty": torch.zeros(0, 4),
        "j.fp8": torch.randn(4, generator=gen).to(torch.float8_e4m3fn),
        "k.bytes": torch.arange(3, dtype=torch.uint8),
        "l.i8": torch.arange(3, dtype=torch.int8),
        "m.i16": torch.arange(3, dtype=torch.int16),
        "n.fp8": torch.randn(4, generator=gen).to(torch.float8_e5m2),
    }
    written: ckpt.Digests = {}
    path = tmp_path / "w.safetensors"
    ckpt.write_safetensors_hashed(tensors, path, tmp_path, written, metadata)
    assert path.read_bytes() == save(tensors, metadata=metadata)
    assert written["w.safetensors"]["sha256"] == sha256(path)


def ae_model(family: str) -> torch.nn.Module:
    """dc-ae-tiny, or the micro Reducio-VAE (reducio-tiny resized), seeded."""
    if family == "reducio":
        return micro_reducio()
    torch.manual_seed(0)
    return build_autoencoder("dc-ae-tiny")


@pytest.mark.parametrize("family", ["dcae", "reducio"])
def test_ae_weights_hashed_while_written_are_the_same_files_and_not_read_back(
    tmp_path, monkeypatch, family
):
    from vidcli.train.ae import save_ae_weights

    model = ae_model(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    averages = {k: v * 0.5 for k, v in state.items()}
    hashed, plain = tmp_path / "hashed", tmp_path / "plain"
    hashed.mkdir()
    plain.mkdir()
    written: ckpt.Digests = {}
    for stem, weights in (("model", state), ("ema", averages)):
        save_ae_weights(model, weights, hashed, stem, written)
        save_ae_weights(model, weights, plain, stem)  # the stage's writer before: save_file
    assert sorted(written) == ["ema.safetensors", "model.safetensors"]
    assert sorted(p.name for p in hashed.iterdir()) == sorted(p.name for p in plain.iterdir())
    assert (hashed / "config.json").read_bytes() == (plain / "config.json").read_bytes()
    for name in written:
        got, want = (hashed / name).read_bytes(), (plain / name).read_bytes()
        parts = safetensors_parts(got)
        assert parts == safetensors_parts(want), name
        # save_file writes __metadata__'s keys in hash order: with two (DC-AE's "format" and
        # "vidcli") its bytes are one of two, ours the one in the metadata's own order.
        if len(parts[1] or {}) < 2:
            assert got == want, name

    real, read = ckpt._sha256, []
    monkeypatch.setattr(ckpt, "_sha256", lambda path: read.append(path.name) or real(path))
    ckpt.write_manifest(hashed, written)
    assert read == ["config.json"]
    ckpt.verify_manifest(hashed)
    loaded = load_autoencoder(hashed).state_dict()
    ema = load_file(str(hashed / "ema.safetensors"))
    assert loaded.keys() == ema.keys() == state.keys()
    for name, want in state.items():
        assert torch.equal(loaded[name], want) and torch.equal(ema[name], averages[name]), name


def test_a_failed_write_records_nothing_and_leaves_no_file(tmp_path):
    written: ckpt.Digests = {}
    with pytest.raises(OSError), ckpt.hashed_file(tmp_path / "a.bin", tmp_path, written) as f:
        f.write(b"half")
        raise OSError("disk full")
    assert written == {} and list(tmp_path.iterdir()) == []


def test_bare_resume_follows_latest_not_the_highest_step(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for step, lineage in ((4, ["a4"]), (6, ["a4", "a6"]), (5, ["a4", "b5"])):
        staged(checkpoints, step, lineage)
        ckpt.write_manifest(ckpt.staging_dir(checkpoints, step))
        ckpt.publish(checkpoints, step, keep_last=3, lineage=lineage)
    assert ckpt.resolve_resume("latest", checkpoints) == ckpt.step_dir(checkpoints, 5)

    (checkpoints / "latest").unlink()
    os.symlink("../elsewhere", checkpoints / "latest")
    with pytest.raises(UsageError, match="not a checkpoint in"):
        ckpt.resolve_resume("latest", checkpoints)


def test_pruning_follows_the_lineage_not_the_names(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    a: list[str] = []
    for step in (2, 4, 6):  # run a: a checkpoint every 2 steps, keep 3
        a.append(f"a{step}")
        staged(checkpoints, step, list(a))
        ckpt.publish(checkpoints, step, keep_last=3, lineage=list(a))
    assert steps(checkpoints) == [2, 4, 6]

    # Run b resumed from a's step 4 and keeps 1: a's step 2 (an ancestor) goes, step 4 (where
    # b started) stays, step 6 (a's branch, abandoned) is not b's to remove.
    resumed = ckpt.step_dir(checkpoints, 4)
    b = ["a2", "a4", "b5"]
    staged(checkpoints, 5, b)
    ckpt.publish(checkpoints, 5, keep_last=1, lineage=b, resumed_from=resumed)
    assert steps(checkpoints) == [4, 5, 6]

    # Run c resumed from b's step 5 and keeps 2: b's older ancestor (a's step 4) goes now.
    c = [*b, "c7"]
    staged(checkpoints, 7, c)
    ckpt.publish(checkpoints, 7, 2, c, resumed_from=ckpt.step_dir(checkpoints, 5))
    assert steps(checkpoints) == [5, 6, 7]
    assert os.readlink(checkpoints / "latest") == "step-0000007"


SCRIPT = r"""
import json, sys
from pathlib import Path
import deepspeed
import torch
from torch import nn
from vidcli.recipe import Recipe, LauncherSection, TrainSection
from vidcli.train import checkpoint as ckpt, loop
from vidcli.launch import leave_process_group
from vidcli.train.launcher import init_process_group, make_engine

out, resume, cfg = Path(sys.argv[1]), sys.argv[2] or None, json.loads(sys.argv[3])
zero_stage = cfg.get("zero_stage", 2)
rank, world = init_process_group()
counts = {"state_dicts": 0, "verified": 0, "largest_gather": 0}

full_state_dict = loop.full_state_dict
def counting_full_state_dict(*args, **kwargs):
    weights = full_state_dict(*args, **kwargs)
    counts["state_dicts"] += weights is not None
    return weights
loop.full_state_dict = counting_full_state_dict

verify_manifest = ckpt.verify_manifest
def counting_verify(folder):
    counts["verified"] += 1
    verify_manifest(folder)
ckpt.verify_manifest = counting_verify

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
recipe = Recipe(
    train=TrainSection(output=str(out / "run"), max_steps=cfg["max_steps"], batch_size=2,
                       lr=0.1, warmup_steps=0, ema_decay=0.9,
                       log_every=1, ckpt_every=cfg["ckpt_every"], keep_last=cfg["keep_last"]),
    launcher=LauncherSection(zero_stage=zero_stage),
)

def batch_at(index):
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(index))
    return x, x.sum(dim=1)

def loss(engine, batch, step):
    x, y = batch
    return (engine(x)[:, 0] - y).pow(2).mean(), {}

engine = make_engine(model, recipe.train, recipe.launcher, loop.lr_multiplier(recipe.train))

gather = deepspeed.zero.GatheredParameters
def counting_gather(params, *args, **kwargs):
    params = list(params)
    counts["largest_gather"] = max(counts["largest_gather"], len(params))
    return gather(params, *args, **kwargs)
deepspeed.zero.GatheredParameters = counting_gather

def save_weights(state, folder, stem, written=None):
    ckpt.write_safetensors_hashed(state, folder / f"{stem}.safetensors", folder, written)

spec = loop.StageSpec("toy", model, batch_at, loss, save_weights)
result = loop.train(spec, recipe, engine, rank, world, resume)
counts["resumed_from"] = result.resumed_from
with gather(list(model.parameters()), enabled=zero_stage == 3):
    counts["weights"] = {k: v.flatten().tolist() for k, v in model.state_dict().items()}
(out / f"rank{rank}.json").write_text(json.dumps(counts))
leave_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_ranks(script: str, tmp_path: Path, *args: str) -> list[dict]:
    """Run `script` on 2 gloo ranks (torchrun) with `tmp_path` and `args`; what each rank wrote
    to `tmp_path/rank<r>.json`."""
    path = tmp_path / "script.py"
    path.write_text(script)
    for old in tmp_path.glob("rank*.json"):
        old.unlink()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), str(path), str(tmp_path), *args]
    env = subprocess_env(OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def two_ranks(tmp_path: Path, resume: str, **cfg: int) -> list[dict]:
    """One toy run on 2 ranks; what each rank counted (state dicts, verifications, ...)."""
    return on_two_ranks(SCRIPT, tmp_path, resume, json.dumps(cfg))


RESOLVE = r"""
import json, sys
from pathlib import Path
import torch.distributed as dist
from vidcli.errors import UsageError
from vidcli.train import checkpoint as ckpt, loop

out, checkpoints = Path(sys.argv[1]), Path(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
seen = {"verified": 0}

verify_manifest = ckpt.verify_manifest
def counting_verify(folder):
    seen["verified"] += 1
    verify_manifest(folder)
ckpt.verify_manifest = counting_verify

run = loop.CheckpointRun(checkpoints, rank, "", None, loop._checkpoint_group())
try:
    folder, run_id = loop._resolve_on_rank_0("latest", run)
    seen |= {"folder": str(folder), "run_id": run_id}
except UsageError as err:
    seen |= {"error": str(err), "hint": err.hint}
(out / f"rank{rank}.json").write_text(json.dumps(seen))
# Exiting with the checkpoint group's gloo threads still running aborts the process.
dist.destroy_process_group()
"""


def test_one_rank_verifies_and_every_rank_gets_its_verdict(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    staged(checkpoints, 3, ["a3"])
    shard = ckpt.staging_dir(checkpoints, 3) / "deepspeed" / "optim_states.pt"
    shard.parent.mkdir()
    torch.save({"exp_avg": torch.randn(8)}, shard)
    ckpt.write_manifest(ckpt.staging_dir(checkpoints, 3))
    ckpt.publish(checkpoints, 3, keep_last=1, lineage=["a3"])

    good = on_two_ranks(RESOLVE, tmp_path, str(checkpoints))
    assert [r["verified"] for r in good] == [1, 0]  # one rank hashes the checkpoint
    assert good[0]["folder"] == good[1]["folder"] == str(ckpt.step_dir(checkpoints, 3))
    assert good[0]["run_id"] == good[1]["run_id"] != ""

    # A checkpoint changed since it was written stops both ranks with the same error.
    shard = ckpt.step_dir(checkpoints, 3) / "deepspeed" / "optim_states.pt"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    bad = on_two_ranks(RESOLVE, tmp_path, str(checkpoints))
    assert [r["verified"] for r in bad] == [1, 0]
    assert "optim_states.pt changed since the checkpoint was written" in bad[0]["error"]
    assert (bad[0]["error"], bad[0]["hint"]) == (bad[1]["error"], bad[1]["hint"])


@pytest.mark.slow  # three 2-rank DeepSpeed launches (about 20 s each on 2 busy cores)
def test_two_ranks_build_once_verify_once_and_resume_along_the_lineage(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    first = two_ranks(tmp_path, "", max_steps=6, ckpt_every=2, keep_last=2)
    assert [r["state_dicts"] for r in first] == [3, 0]  # rank 0 alone, at steps 2, 4 and 6
    assert steps(checkpoints) == [4, 6]
    for folder in ckpt.complete_checkpoints(checkpoints):
        listed = json.loads((folder / ckpt.MANIFEST).read_text())["files"]
        shards = [name for name in listed if name.startswith("deepspeed/")]
        assert len(shards) == 3  # the model states and each rank's optimizer shard
        for name, entry in listed.items():
            assert entry["sha256"] == sha256(folder / name), name

    # Back to step 4: the new branch saves step 5; a's step 6 stays (it is not this lineage's).
    second = two_ranks(
        tmp_path, str(ckpt.step_dir(checkpoints, 4)), max_steps=5, ckpt_every=1, keep_last=2
    )
    assert [r["verified"] for r in second] == [1, 0]  # one rank hashes the checkpoint
    assert [r["state_dicts"] for r in second] == [1, 0]
    assert [r["resumed_from"].endswith("step-0000004") for r in second] == [True, True]
    assert steps(checkpoints) == [4, 5, 6]

    # A bare --resume continues the newest branch (step 5), not the highest step (6); pruning
    # drops this lineage's step 4 and leaves the abandoned step 6 alone.
    third = two_ranks(tmp_path, "latest", max_steps=7, ckpt_every=4, keep_last=2)
    assert [r["resumed_from"].endswith("step-0000005") for r in third] == [True, True]
    assert [r["state_dicts"] for r in third] == [1, 0]
    assert steps(checkpoints) == [5, 6, 7]
    state = json.loads((checkpoints / "step-0000007" / "trainer_state.json").read_text())
    assert len(state["lineage"]) == 4  # a's steps 2 and 4, step 5, step 7


@pytest.mark.slow  # one 2-rank DeepSpeed launch
def test_zero3_gathers_one_module_at_a_time_and_only_rank_0_keeps_the_weights(tmp_path):
    ranks = two_ranks(tmp_path, "", max_steps=2, ckpt_every=1, keep_last=2, zero_stage=3)
    assert [r["state_dicts"] for r in ranks] == [2, 0]
    assert ranks[0]["largest_gather"] == 2  # one Linear's weight and bias, never all 4
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert sorted(saved) == sorted(ranks[0]["weights"])
    for name, values in ranks[0]["weights"].items():
        assert saved[name].flatten().tolist() == pytest.approx(values), name


RECORD_READS = r"""
import json, sys
from pathlib import Path
from vidcli.train import checkpoint as ckpt

# The files each write_manifest hashes by reading them back, one list per checkpoint.
reads, sha256, write_manifest = [], ckpt._sha256, ckpt.write_manifest
def recording_manifest(folder, written=None):
    reads.append([])
    ckpt._sha256 = lambda path: reads[-1].append(path.name) or sha256(path)
    try:
        write_manifest(folder, written)
    finally:
        ckpt._sha256 = sha256
ckpt.write_manifest = recording_manifest

from vidcli.cli import main
try:
    main(sys.argv[2:])
finally:
    Path(sys.argv[1]).write_text(json.dumps(reads))
"""


def train_ae_recipe(tmp_path: Path, family: str) -> str:
    """The tiny recipe of `family`: demo-ae.toml on dc-ae-tiny, or reducio-tiny.toml resized to
    the micro Reducio-VAE (`[ae] overrides` is a table, which --set cannot give)."""
    if family == "dcae":
        return str(REPO / "recipes" / "demo-ae.toml")
    recipe = tmp_path / "micro.toml"
    # JSON's inline objects are TOML's with ":" as " =" (no value here holds a colon).
    recipe.write_text(
        f"include = {json.dumps(str(REPO / 'recipes' / 'reducio-tiny.toml'))}\n[ae]\n"
        f"overrides = {json.dumps(MICRO_REDUCIO).replace(':', ' =')}\n"
    )
    return str(recipe)


@pytest.mark.parametrize("family", ["dcae", "reducio"])
def test_train_ae_hashes_its_weights_as_written_and_resumes_from_them(tmp_path, family):
    values = {
        **tiny_ae_values(tmp_path),
        "train.batch_size": 1,
        "train.gan_start": 1,  # the discriminator is saved (DeepSpeed shards) and resumed too
        "train.log_every": 1,
        "train.ckpt_every": 2,
    }
    if family == "reducio":  # the recipe's preset, resized; the micro model's clips
        del values["ae.preset"]
        values |= {"data.num_frames": 4, "data.height": 32, "data.width": 32}
    reads = tmp_path / "reads.json"

    def train_ae(steps: int, *extra: str) -> None:
        """Train to `steps`; each checkpoint's manifest read back only small files: config.json
        and DeepSpeed's own (`latest`, its scripts), no weights (.safetensors, .pt)."""
        args = recipe_args(train_ae_recipe(tmp_path, family), {**values, "train.max_steps": steps})
        command = [sys.executable, "-c", RECORD_READS, str(reads), "train-ae", *args, *extra]
        env = subprocess_env(OMP_NUM_THREADS="1")
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        (read,) = json.loads(reads.read_text())
        assert "config.json" in read, read
        assert not [name for name in read if name.endswith((".safetensors", ".pt"))], read

    train_ae(2)
    first = tmp_path / "run/checkpoints/step-0000002"
    assert {"model.safetensors", "ema.safetensors", "discriminator"} <= {
        p.name for p in first.iterdir()
    }
    train_ae(3, "--resume", "latest")
    records = [
        json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records] == [1, 2, 3]
    last = tmp_path / "run/checkpoints/step-0000003"
    ckpt.verify_manifest(last)
    ema_before, ema_after = (load_file(str(c / "ema.safetensors")) for c in (first, last))
    assert ema_before.keys() == ema_after.keys()
    assert any(not torch.equal(ema_before[k], ema_after[k]) for k in ema_before)
