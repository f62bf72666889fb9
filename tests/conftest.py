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
