"""One atomic-write helper (`vidcli.fileio`), used by every writer in vidcli."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

import vidcli
from vidcli.data.synthetic import make_shapes_dataset
from vidcli.errors import UsageError
from vidcli.fileio import atomic_folder, atomic_path, atomic_symlink, atomic_write_text
from vidcli.models.dcae import build_autoencoder, load_autoencoder, save_autoencoder

PACKAGE = Path(vidcli.__file__).parent
RENAMES_ALLOWED = {"fileio.py"}


def test_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temp_names_are_unique_per_writer(tmp_path):
    target = tmp_path / "listing.jsonl"
    (tmp_path / "listing.jsonl.tmp").mkdir()  # a stale fixed-name temp must not matter
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("a")
        second.write_text("b")
    assert target.read_text() == "a"  # the outer block finishes last and wins


def test_synthetic_listing_ignores_a_stale_temp(tmp_path):
    (tmp_path / "listing.jsonl.tmp").mkdir()
    listing = make_shapes_dataset(tmp_path, n=1, size=32, frames=2, fps=4)
    assert listing.read_text().count("\n") == 1


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "a").write_text("1")
        (staging / "b").write_text("1")
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "a").write_text("2")
        raise RuntimeError("killed")
    with atomic_folder(target) as staging:
        (staging / "a").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["a"] and (target / "a").read_text() == "3"
    _fail_rename(monkeypatch, 2)
    with pytest.raises(OSError), atomic_folder(target) as staging:
        (staging / "a").write_text("4")
    assert (target / "a").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_symlink_repoints_in_one_step(tmp_path):
    (tmp_path / "step-1").mkdir()
    (tmp_path / "step-2").mkdir()
    (tmp_path / ".latest.tmp").write_text("a stale fixed-name temp must not matter")
    atomic_symlink(tmp_path / "latest", "step-1")
    atomic_symlink(tmp_path / "latest", "step-2")
    assert os.readlink(tmp_path / "latest") == "step-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".latest.tmp",
        "latest",
        "step-1",
        "step-2",
    ]


def test_the_file_stdout_is_redirected_to_is_never_replaced(tmp_path):
    # `--json > out.json` with a writer of out.json: a rename over it would lose stdout.
    target = tmp_path / "out.json"
    saved = os.dup(1)
    try:
        with target.open("w") as redirected:
            os.dup2(redirected.fileno(), 1)
            with pytest.raises(UsageError, match="stdout is redirected"):
                atomic_write_text(target, "{}")
            atomic_write_text(tmp_path / "other.json", "{}")  # any other file is fine
            os.write(1, b"stdout\n")
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert target.read_text() == "stdout\n"


def test_save_autoencoder_publishes_config_and_weights_together(tmp_path, monkeypatch):
    old = build_autoencoder("dc-ae-tiny")
    folder = save_autoencoder(old, tmp_path / "ae")
    torch.manual_seed(1)
    new = build_autoencoder("dc-ae-tiny", scaling_factor=0.5)
    _fail_rename(monkeypatch, 2)  # the publish is interrupted after its first rename
    with pytest.raises(OSError):
        save_autoencoder(new, folder)
    monkeypatch.undo()
    loaded = load_autoencoder(folder)
    assert loaded.config == old.config
    for name, value in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ae"]
    assert load_autoencoder(save_autoencoder(new, folder)).config.scaling_factor == 0.5


def test_save_autoencoder_refuses_to_empty_a_shared_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"notes\.txt"):
        save_autoencoder(build_autoencoder("dc-ae-tiny"), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_no_writer_renames_files_itself():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        where = path.relative_to(PACKAGE).as_posix()
        if where in RENAMES_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "mkstemp"):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("os", "tempfile"):
                    offenders.append(f"{where}:{node.lineno} {owner.id}.{node.attr}")
    assert not offenders, "use vidcli.fileio: " + ", ".join(offenders)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fail_rename(monkeypatch, call: int) -> None:
    """Make the `call`-th `os.replace` from now on raise, as a crash at that point would."""
    real, count = os.replace, [0]

    def replace(src, dst):
        count[0] += 1
        if count[0] == call:
            raise OSError("simulated crash")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
