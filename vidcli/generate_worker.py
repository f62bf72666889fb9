"""`vidcli generate --nproc N`: the ranks of one sequence-parallel generation run.

The parent (`spawn`) writes the resolved recipe and the options to a temporary folder, starts N
ranks of `python -m vidcli.generate_worker` under `torch.distributed.run` (`vidcli.launch`, as the
trainers do) and reads back the result rank 0 wrote. Every rank loads the models and samples its
shard of the video tokens (`[launcher] sequence_parallel`); rank 0 alone decodes and writes the
files, and reports the result or the error (a usage error keeps exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from vidcli.console import DEBUG_ENV, configure, explain_error, report_error, to_jsonable
from vidcli.errors import StageFailed, UsageError
from vidcli.launch import run_ranks, torchrun_command
from vidcli.recipe import Recipe, load_recipe, write_resolved_recipe


def spawn(recipe: Recipe, options: Any) -> Any:
    """Run `vidcli.generate.run(recipe, options)` on `[launcher] nproc` local ranks; its result."""
    from vidcli.generate import GeneratedVideo, GenerateResult

    workdir = Path(tempfile.mkdtemp(prefix="vidcli-generate-"))
    try:
        recipe_file = write_resolved_recipe(recipe, workdir)
        options_file, result_file = workdir / "options.json", workdir / "result.json"
        options_file.write_text(json.dumps(to_jsonable(options)))
        args = ["--recipe", str(recipe_file), "--options", str(options_file)]
        args += ["--result", str(result_file)]
        nproc = recipe.launcher.nproc
        returncode = run_ranks(torchrun_command("vidcli.generate_worker", args, nproc), nproc)
        payload = json.loads(result_file.read_text()) if result_file.is_file() else None
        if returncode != 0 or payload is None or "error" in payload:
            if payload is not None and "error" in payload:
                error = UsageError if payload["exit_code"] == 2 else StageFailed
                raise error(payload["error"])
            raise StageFailed(
                f"generate failed on one of its {nproc} ranks (exit {returncode}); see the rank "
                "logs above",
                hint=f"run again with --debug (sets {DEBUG_ENV}=1 on every rank)",
            )
        videos = [GeneratedVideo(**{**v, "path": Path(v["path"])}) for v in payload.pop("videos")]
        return GenerateResult(videos=videos, **payload)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _options(payload: dict[str, Any]) -> Any:
    """GenerateOptions from their JSON form (paths back to Path)."""
    from vidcli.generate import GenerateOptions

    for key in ("out", "image"):
        if payload.get(key) is not None:
            payload[key] = Path(payload[key])
    fields = {f.name for f in dataclasses.fields(GenerateOptions)}
    return GenerateOptions(**{k: v for k, v in payload.items() if k in fields})


def worker_main(argv: list[str] | None = None) -> int:
    """One rank: run generate; rank 0 writes its result (or error) file."""
    from vidcli import generate

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
    if rank0:
        args.result.write_text(json.dumps(to_jsonable(result)))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
