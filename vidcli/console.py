"""What vidcli shows a person: results on stdout, logs and progress on stderr, one error table.

stdout carries results only (paths, or one JSON object with `--json`), so shell pipelines can
read it; logs, warnings, progress bars and errors go to stderr.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vidcli.errors import VidcliError
from vidcli.fileio import saved_stdout

DEBUG_ENV = "VIDCLI_DEBUG"
QUIET_ENV = "VIDCLI_QUIET"

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("vidcli")

# Import-time warnings of optional dependencies that say nothing about a run: torchao (pulled in
# by diffusers and peft when installed) fails to load its CUDA extensions on a CPU torch and
# registers enums the way torch now deprecates. Shown again with --debug.
IMPORT_NOISE_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao")


def configure(*, quiet: bool = False, debug: bool = False) -> None:
    """Apply a command's `--quiet` / `--debug` (exported so launcher ranks inherit them)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
    if quiet:
        os.environ[QUIET_ENV] = "1"
    level = logging.DEBUG if debug_enabled() else logging.WARNING if quiet else logging.INFO
    if not log.handlers:
        handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)
    for name in IMPORT_NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug_enabled() else logging.ERROR)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def quiet_enabled() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def progress_enabled() -> bool:
    """Progress bars only for a person watching: stderr is a terminal and not `--quiet`."""
    return stderr.is_terminal and not quiet_enabled()


@contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich progress display on stderr; silent when not wanted (see `progress_enabled`)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=stderr, disable=not progress_enabled()) as bar:
        yield bar


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (libraries, child processes) to stderr.

    stdout is for results only; DeepSpeed, PyAV and others print logs there. Both the Python
    stream and file descriptor 1 are redirected, so C code and subprocesses follow too.
    """
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None  # a captured stream (tests): the Python-level redirect is enough
    saved = os.dup(fd) if fd is not None else None
    if saved is not None:
        saved_stdout.append(saved)  # writers still refuse to replace the file it points to
    try:
        if fd is not None:
            os.dup2(sys.stderr.fileno(), fd)
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            saved_stdout.remove(saved)
            os.dup2(saved, fd)
            os.close(saved)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths, tuples and numpy/torch scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


NON_FINITE_KEY = "non_finite"
"""Top-level --json field naming each value printed as null because it was NaN or ±Infinity."""


def replace_non_finite(value: Any, path: str = "", found: dict[str, str] | None = None) -> Any:
    """A JSON-able value with NaN and ±Infinity floats as None (JSON has no such numbers);
    `found` gets {path: 'nan' | 'inf' | '-inf'}, paths like `rows[1].psnr`."""
    found = {} if found is None else found
    if isinstance(value, float) and not math.isfinite(value):
        found[path] = "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
        return None
    if isinstance(value, dict):
        return {
            k: replace_non_finite(v, f"{path}.{k}" if path else str(k), found)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [replace_non_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def json_payload(result: Any) -> Any:
    """The --json object of a result: finite numbers only, plus `non_finite` when any was not."""
    found: dict[str, str] = {}
    payload = replace_non_finite(to_jsonable(result), found=found)
    if found:
        if not isinstance(payload, dict):
            payload = {"value": payload}
        payload[NON_FINITE_KEY] = found
    return payload


def print_result(result: Any, as_json: bool) -> None:
    """A stage's result on stdout: one JSON object, or the lines the result chooses to show."""
    if as_json:
        # allow_nan=False: a non-finite number that slipped past json_payload fails loudly here
        # rather than printing NaN, which JSON parsers reject.
        sys.stdout.write(json.dumps(json_payload(result), allow_nan=False) + "\n")
        return
    lines = result.stdout_lines() if hasattr(result, "stdout_lines") else None
    if lines is None:
        lines = [f"{k}: {v}" for k, v in to_jsonable(result).items()]
    for line in lines:
        sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


# (exception type, exit code, hint) — the first matching row wins; VidcliError carries its own.
ERROR_TABLE: list[tuple[type[BaseException], int, str | None]] = [
    (VidcliError, 1, None),
    (FileNotFoundError, 2, None),
    (IsADirectoryError, 2, None),
    (PermissionError, 1, "check the file permissions"),
    (MemoryError, 1, "use a smaller size, batch or tile"),
    (OSError, 1, None),
]


def explain_error(err: BaseException) -> tuple[str, str | None, int]:
    """(one-line message, hint, exit code) for an exception."""
    if isinstance(err, VidcliError):
        return str(err), err.hint, err.exit_code
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        target = f" writing {err.filename}" if err.filename else ""
        return f"disk full{target}", "free some space or choose another --out", 1
    if type(err).__name__ == "OutOfMemoryError":
        return "out of GPU memory", "use a smaller size, batch, or enable tiling/--offload", 1
    for kind, code, hint in ERROR_TABLE:
        if isinstance(err, kind):
            message = str(err)
            if isinstance(err, OSError) and err.filename and str(err.filename) not in message:
                message = f"{err.filename}: {message}"
            return message, hint, code
    return f"unexpected error: {type(err).__name__}: {err}", "run again with --debug", 1


def report_error(err: BaseException) -> int:
    """Print one line (plus hint) on stderr, the traceback with --debug; return the exit code."""
    message, hint, code = explain_error(err)
    if debug_enabled():
        traceback.print_exception(err, file=sys.stderr)
    first_line = " ".join(message.split())
    stderr.print(f"[bold red]Error:[/] {escape(first_line)}", markup=True, highlight=False)
    if hint:
        stderr.print(f"[dim]Hint: {escape(hint)}[/]", markup=True, highlight=False)
    return code
