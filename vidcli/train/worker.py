"""One rank of a spawned training job: `python -m vidcli.train.worker --stage dit --recipe R`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vidcli.console import configure, explain_error, report_error, to_jsonable
from vidcli.launch import leave_process_group
from vidcli.recipe import load_recipe
from vidcli.train.launcher import run_worker
from vidcli.train.stages import STAGES


def worker_main(argv: list[str] | None = None) -> int:
    """Entry point of a spawned rank: run the stage, rank 0 writes its result (or error) file."""
    parser = argparse.ArgumentParser(prog="vidcli.train.worker")
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)
    configure()
    try:
        result = run_worker(STAGES[args.stage], load_recipe(args.recipe), args.resume)
    except Exception as err:  # every rank reports; rank 0 leaves the message for the parent
        code = report_error(err)
        if int(os.environ.get("RANK", "0")) == 0:
            message, _, exit_code = explain_error(err)
            args.result.write_text(json.dumps({"error": message, "exit_code": exit_code}))
        return code
    finally:
        leave_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        args.result.write_text(json.dumps(to_jsonable(result)))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
