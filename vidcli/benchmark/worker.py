"""Benchmark rows in processes of their own, driven one call at a time by the parent.

A row's models live in a worker process, so its peak memory is its own (`ru_maxrss` never goes
down, and CUDA's peak counter is per process), while the parent decides the order of the calls:
several rows can be timed interleaved (A B A B ...) with only one of them running at a time.

Protocol: JSON lines. The parent sends {"target": "module:Class", "kwargs": {...}}, then
{"call": "method", "args": [...]} per call; the worker answers each with {"value": ...} or
{"error": "..."}. Only these lines use the worker's stdout: anything else it prints goes to
stderr, which is the parent's.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import traceback
from typing import Any

from vidcli.errors import StageFailed

_SERVE = "from vidcli.benchmark.worker import serve; serve()"


class RowProcess:
    """A `target` object built in a child process; `call` runs one of its methods there."""

    def __init__(self, target: str, label: str, **kwargs: Any):
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._exchange({"target": target, "kwargs": kwargs})

    def call(self, method: str, *args: Any) -> Any:
        """The value of `method(*args)` on the child's object; StageFailed if it raised."""
        return self._exchange({"call": method, "args": list(args)})

    def _exchange(self, message: dict[str, Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # the child is gone; its exit code is reported below
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise StageFailed(f"{self.label}: its worker process ended (exit {code})")
        reply = json.loads(line)
        if "error" in reply:
            raise StageFailed(f"{self.label}: {reply['error']}")
        return reply["value"]

    def close(self) -> None:
        """End the child (closing its stdin ends its loop) and wait for it."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> RowProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve() -> None:
    """The child's loop: build the target object, then answer calls until stdin closes."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints (C code included) go to stderr, never into the protocol
    sys.stdout = sys.stderr

    def answer(**reply: Any) -> None:
        replies.write(json.dumps(reply) + "\n")
        replies.flush()

    obj = None
    for line in sys.stdin:
        message = json.loads(line)
        try:
            if obj is None:
                module, name = message["target"].split(":")
                obj = getattr(importlib.import_module(module), name)(**message["kwargs"])
                value = None
            else:
                value = getattr(obj, message["call"])(*message["args"])
        except Exception as error:  # reported to the parent, which raises it as StageFailed
            if os.environ.get("VIDCLI_DEBUG", "") not in ("", "0"):
                traceback.print_exc()
            answer(error=f"{type(error).__name__}: {error}")
            return
        answer(value=value)
