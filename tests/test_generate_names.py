"""Output names of `vidcli generate`: a default name is never reused, `--out FILE` is never
replaced without `--overwrite`, and a name is reserved atomically (O_CREAT | O_EXCL)."""

import json
import threading
from pathlib import Path

import pytest
import test_generate
from test_generate import decode, generate, recipe_file

from vidcli import generate as pipeline
from vidcli.errors import UsageError

tiny_weights = test_generate.tiny_weights  # the tiny AE + DiT fixture

PROMPT = "a red circle moving right"
FIRST, SECOND = (
    "outputs/000-a-red-circle-moving-right.mp4",
    "outputs/000-a-red-circle-moving-right-1.mp4",
)


def test_a_rerun_gets_the_next_free_name_and_leaves_the_first_intact(
    tmp_path,
    tiny_weights,
    monkeypatch,
):
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, tiny_weights)
    first = generate(PROMPT, "--recipe", str(recipe))
    assert first.exit_code == 0, first.output
    assert first.stdout.split() == [FIRST]
    written = Path(FIRST).read_bytes()
    second = generate(PROMPT, "--recipe", str(recipe), "--seed", "7")
    assert second.exit_code == 0, second.output
    assert second.stdout.split() == [SECOND]
    assert Path(FIRST).read_bytes() == written  # untouched
    for path, seed in ((FIRST, 0), (SECOND, 7)):
        frames, _ = decode(Path(path))
        assert frames.shape == (8, 64, 64, 3)
        sidecar = json.loads(Path(path + ".json").read_text())
        assert sidecar["prompt"] == PROMPT and sidecar["seed"] == seed
    assert sorted(p.name for p in Path("outputs").iterdir()) == sorted(
        [
            Path(FIRST).name,
            Path(FIRST).name + ".json",
            Path(SECOND).name,
            Path(SECOND).name + ".json",
        ]
    )


def test_overwrite_replaces_the_first_default_name(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("outputs").mkdir()
    Path(FIRST).write_bytes(b"old")
    recipe = recipe_file(tmp_path, tiny_weights)
    result = generate(PROMPT, "--recipe", str(recipe), "--overwrite")
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == [FIRST] and Path(FIRST).read_bytes() != b"old"
    assert not Path(SECOND).exists()


def test_an_existing_out_file_is_still_refused(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    out = tmp_path / "clip.mp4"
    assert generate(PROMPT, "--recipe", str(recipe), "--out", str(out)).exit_code == 0
    written = out.read_bytes()
    again = generate(PROMPT, "--recipe", str(recipe), "--out", str(out), "--seed", "7")
    assert again.exit_code == 2
    errors = [line for line in again.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {out} already exists; pass --overwrite to replace it"]
    assert out.read_bytes() == written
    assert sorted(p.name for p in tmp_path.glob("clip*")) == ["clip.mp4", "clip.mp4.json"]


def test_each_prompt_of_a_rerun_gets_its_own_free_name(tmp_path, tiny_weights):
    recipe = recipe_file(tmp_path, tiny_weights)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a white triangle moving left\na green circle moving down\n")
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "001-a-green-circle-moving-down.gif").write_bytes(b"someone else's")
    args = ["--prompts-file", str(prompts), "--recipe", str(recipe), "--format", "gif"]
    runs = [generate(*args, "--out", str(folder), "--batch-size", "2") for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[-1].output
    names = [[Path(line).name for line in r.stdout.split()] for r in runs]
    assert names == [
        ["000-a-white-triangle-moving-left.gif", "001-a-green-circle-moving-down-1.gif"],
        ["000-a-white-triangle-moving-left-1.gif", "001-a-green-circle-moving-down-2.gif"],
    ]
    assert (folder / "001-a-green-circle-moving-down.gif").read_bytes() == b"someone else's"
    assert all((folder / name).stat().st_size > 0 for run in names for name in run)


def options(folder: Path, *prompts: str, **extra) -> pipeline.GenerateOptions:
    return pipeline.GenerateOptions(list(prompts), out=folder, **extra)


def test_two_reservations_never_get_the_same_name(tmp_path):
    with (
        pipeline.reserved_outputs(options(tmp_path, "p", "q")) as one,
        pipeline.reserved_outputs(options(tmp_path, "p", "q")) as two,
    ):
        assert [p.name for p in one.paths] == ["000-p.mp4", "001-q.mp4"]
        assert [p.name for p in two.paths] == ["000-p-1.mp4", "001-q-1.mp4"]
        assert all(p.is_file() and p.stat().st_size == 0 for p in one.paths + two.paths)
        # --out FILE naming a reserved name is refused like an existing file.
        with (
            pytest.raises(UsageError, match="already exists"),
            pipeline.reserved_outputs(options(one.paths[0], "p")),
        ):
            pass


def test_reservations_from_many_threads_are_distinct(tmp_path):
    names: list[Path] = []
    start = threading.Barrier(8)

    def reserve() -> None:
        start.wait()
        with pipeline.reserved_outputs(options(tmp_path, "p")) as taken:
            names.extend(taken.paths)

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(p.name for p in names) == sorted(
        ["000-p.mp4"] + [f"000-p-{n}.mp4" for n in range(1, 8)]
    )


def test_a_failed_run_gives_back_only_unwritten_names(tmp_path):
    with (
        pytest.raises(RuntimeError),
        pipeline.reserved_outputs(options(tmp_path, "p", "q")) as taken,
    ):
        done = taken.paths[0].with_name(".tmp")
        done.write_bytes(b"video")
        done.replace(taken.paths[0])  # as _write publishes a finished video
        raise RuntimeError("the second prompt failed")
    assert taken.paths[0].read_bytes() == b"video" and not taken.paths[1].exists()


def test_a_leftover_sidecar_keeps_its_name(tmp_path):
    (tmp_path / "000-p.mp4.json").write_text("{}")
    with pipeline.reserved_outputs(options(tmp_path, "p")) as taken:
        assert [p.name for p in taken.paths] == ["000-p-1.mp4"]


def test_a_refused_run_leaves_no_placeholder_or_folder(tmp_path, tiny_weights, monkeypatch):
    """5 frames is refused after the models load, so after the name was taken: it is given
    back, and the outputs/ folder made for it removed."""
    monkeypatch.chdir(tmp_path)
    recipe = recipe_file(tmp_path, tiny_weights)
    result = generate(PROMPT, "--recipe", str(recipe), "--frames", "5")
    assert result.exit_code == 2 and "multiple of 4" in result.stderr
    assert not Path("outputs").exists()
