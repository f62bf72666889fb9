"""Atomic file writes: a temp file in the target folder, renamed into place when complete."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def temp_path_beside(path: Path) -> Path:
    """An empty temp file next to `path` with the permissions a plain `open` would give.

    mkstemp creates files 0600; outputs people share (videos, manifests) should follow the umask.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file in the same folder, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
