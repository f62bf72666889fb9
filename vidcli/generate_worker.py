"""One rank of `vidcli generate --nproc N`: `python -m vidcli.generate_worker --recipe R ...`.

`vidcli.generate` (the parent) writes the resolved recipe and the options to a temporary folder
and starts N of these under `torch.distributed.run` (`vidcli.launch`, as the trainers do). Every
rank loads the models and samples its shard of the video tokens (`[launcher]
sequence_parallel`); rank 0 alone decodes and writes the files, and reports the result or the
error (a usage error keeps exit code 2) for the parent to read back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from vidcli import generate
from vidcli.console import configure, explain_error, report_error, to_jsonable
from vidcli.launch import leave_process_group
from vidcli.recipe import load_recipe


def _options(payload: dict[str, Any]) -> Any:
    """GenerateOptions from their JSON form (paths back to Path)."""
    for key in ("out", "image"):
        if payload.get(key) is not None:
            payload[key] = Path(payload[key])
    fields = {f.name for f in dataclasses.fields(generate.GenerateOptions)}
    return generate.GenerateOptions(**{k: v for k, v in payload.items() if k in fields})


def worker_main(argv: list[str] | None = None) -> int:
    """One rank: run generate; rank 0 writes its result (or error) file."""
    parser = argparse.ArgumentParser(prog="vidcli.generate_worker")
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--options", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    configure()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        options = _options(json.loads(args.options.read_text()))
        result = generate.run(load_recipe(args.recipe), options)
    except Exception as err:  # every rank reports; rank 0 leaves the message for the parent
        code = report_error(err)
        if rank0:
            message, _, exit_code = explain_error(err)
            args.result.write_text(json.dumps({"error": message, "exit_code": exit_code}))
        return code
    finally:
        leave_process_group()
    if rank0:
        args.result.write_text(json.dumps(to_jsonable(result)))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
