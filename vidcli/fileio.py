"""Atomic writes: readers see the old file (or folder) or the new one, never a partial one.

Every writer in vidcli goes through these helpers:

- `atomic_path(path)`: a fresh, uniquely named temp file beside `path` to write by any means
  (pyarrow, safetensors, PyAV); renamed over `path` when the block ends, removed on error.
- `atomic_write_text(path, text)` / `atomic_write_bytes(path, data)`: the common cases.
- `atomic_folder(path)`: a staging folder for outputs made of several files (a model's
  config + weights); the whole folder is renamed into place in one step. `replace_folder`
  publishes a folder staged elsewhere (a checkpoint every rank wrote into) the same way.
- `atomic_symlink(link, target)`: repoint a symlink (a checkpoint's `latest`) in one rename.

Temp names are unique (mkstemp / mkdtemp in the target's folder, so the final rename never
crosses file systems): two writers of one target, or a leftover from a killed run, never collide.
A file that is this process's stdout (`--json > out.json`) is never renamed over: `atomic_path`
refuses it, since everything printed after would go to the unlinked old file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vidcli.errors import UsageError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def temp_path_beside(path: Path) -> Path:
    """An empty temp file next to `path` with the permissions a plain `open` would give.

    mkstemp creates files 0600; outputs people share (videos, manifests) should follow the umask.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


saved_stdout: list[int] = []
"""Descriptors of the real stdout while `console.stdout_to_stderr` points fd 1 at stderr."""


def is_stdout(path: str | Path) -> bool:
    """Whether `path` is the file this process's stdout writes to, e.g. `> path`."""
    try:
        target = os.stat(path)
    except OSError:  # no such file: nothing to replace
        return False
    for fd in (1, *saved_stdout):
        try:
            out = os.fstat(fd)
        except OSError:  # no stdout at all
            continue
        if (out.st_dev, out.st_ino) == (target.st_dev, target.st_ino):
            return True
    return False


def refuse_stdout(path: str | Path) -> None:
    """UsageError when writing `path` would replace the file stdout is redirected to."""
    if is_stdout(path):
        raise UsageError(
            f"{path} is the file stdout is redirected to; writing it would replace that output",
            hint="redirect stdout to another file name",
        )


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp file beside `path`; it replaces `path` if the block completes.

    On an exception the temp file is removed and `path` keeps its old content (or stays absent).
    """
    refuse_stdout(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; it becomes `path` if the block completes.

    Publishing is one rename when `path` does not exist yet. An existing `path` (folder or file)
    is first renamed aside, then the new folder renamed in, then the old one deleted: a reader
    sees the old folder or the new one whole, never a mix of their files (between the two
    renames `path` is briefly absent). If the second rename fails, the old folder is put back.
    On an exception in the block the staging folder is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; outputs are shared
    try:
        yield staging
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging: Path, path: Path) -> None:
    """Rename the complete folder `staging` to `path`, replacing what is there (see above)."""
    if not os.path.lexists(path):
        os.replace(staging, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old = aside / path.name
    os.replace(path, old)
    try:
        os.replace(staging, path)
    except BaseException:
        os.replace(old, path)  # if even this fails, the old folder stays in `aside`, not deleted
        os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def atomic_symlink(link: str | Path, target: str | Path) -> None:
    """Point `link` at `target`: a new symlink under a unique name, renamed over `link`."""
    link = Path(link)
    while True:
        tmp = link.with_name(f".{link.name}.{os.urandom(6).hex()}.tmp")
        try:
            os.symlink(target, tmp)
            break
        except FileExistsError:
            continue
    try:
        os.replace(tmp, link)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
