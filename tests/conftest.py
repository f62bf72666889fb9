"""Shared test fixtures: the reference folder beside the checkout, small deterministic settings."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """`shared/reference` beside the checkout (CI clones main with shared/ beside it)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference folder not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(autouse=True)
def fresh_console_env(monkeypatch):
    """Each test starts without VIDCLI_DEBUG / VIDCLI_QUIET and leaves none behind.

    `--debug` and `--quiet` export these so launcher ranks inherit them; without this, one test's
    `--debug` would turn on tracebacks for every later test in the process.
    """
    for name in ("VIDCLI_DEBUG", "VIDCLI_QUIET"):
        monkeypatch.setenv(name, "")  # recorded, so teardown removes what the test sets
        monkeypatch.delenv(name)
