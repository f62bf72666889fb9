"""What every command shares: the option types, the result of `--print-recipe`, and `run_action`,
which prints a stage's result or turns its exception into one line and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from vidcli.console import configure, print_result, report_error, stdout_to_stderr

JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout (logs stay on stderr).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or info logs.")]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks (also VIDCLI_DEBUG=1).", envvar=None)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a recipe value: `--set train.lr=1e-4` (TOML literal). Repeatable.",
    ),
]
PrintRecipeOpt = Annotated[
    bool, typer.Option("--print-recipe", help="Print the fully resolved recipe as TOML and exit.")
]
NprocOpt = Annotated[int | None, typer.Option("--nproc", min=1, help="Local ranks to spawn.")]
PlanOpt = Annotated[
    bool,
    typer.Option("--plan", help="Print the memory plan (nothing is loaded) and exit."),
]
GpuMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory",
        min=1,
        help="Device memory in GB (1e9 bytes) for --plan; default: the GPU's.",
    ),
]


def run_action(action: Callable[[], Any], *, as_json: bool, quiet: bool, debug: bool) -> None:
    """Run one stage action; print its result, or turn its exception into one line + exit code."""
    configure(quiet=quiet, debug=debug)
    try:
        with stdout_to_stderr():
            result = action()
    except (Exception, KeyboardInterrupt) as err:
        code = 130 if isinstance(err, KeyboardInterrupt) else report_error(err)
        raise typer.Exit(code) from None
    if result is not None:
        print_result(result, as_json)


@dataclass
class ResolvedRecipe:
    """`--print-recipe`: the fully resolved recipe as TOML."""

    recipe: str

    def stdout_lines(self) -> list[str]:
        return self.recipe.splitlines()
