"""Shared test fixtures: the reference vectors shipped in tests/fixtures, a clean console env."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """tests/fixtures/vectors: the public reference vectors (README.md there says where each was
    made). They ship with the repository, so a missing file fails its test instead of skipping:
    these tests are what prove weight compatibility."""
    return Path(__file__).resolve().parent / "fixtures" / "vectors"


@pytest.fixture(autouse=True)
def fresh_console_env(monkeypatch):
    """Each test starts without VIDCLI_DEBUG / VIDCLI_QUIET and leaves none behind.

    `--debug` and `--quiet` export these so launcher ranks inherit them; without this, one test's
    `--debug` would turn on tracebacks for every later test in the process.
    """
    for name in ("VIDCLI_DEBUG", "VIDCLI_QUIET"):
        monkeypatch.setenv(name, "")  # recorded, so teardown removes what the test sets
        monkeypatch.delenv(name)


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches reset before and after the test: graph counts start from this test's own
    compiles, and no compiled graph or recompile limit leaks into a later test."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
