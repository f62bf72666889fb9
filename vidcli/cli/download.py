"""`vidcli download`: weights from the Hugging Face Hub, by repo id or vidcli alias."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vidcli.cli.common import DebugOpt, JsonOpt, QuietOpt, run_action
from vidcli.errors import UsageError

EXAMPLES = """
Examples:

    vidcli download --list

    vidcli download opensora-v2-hcae --local-dir weights/hcae

    vidcli download mit-han-lab/dc-ae-f32c32-in-1.0-diffusers --include "*.json" --json
"""


def download(
    repo: Annotated[
        str | None, typer.Argument(help="A Hub repo id (owner/name) or a vidcli alias.")
    ] = None,
    include: Annotated[
        list[str] | None, typer.Option("--include", help="Only files matching this glob.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Skip files matching this glob.")
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    local_dir: Annotated[
        Path | None, typer.Option("--local-dir", help="Put the files here, not in the cache.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="Hub token for gated or private repos (or HF_TOKEN).")
    ] = None,
    list_aliases: Annotated[
        bool, typer.Option("--list", help="List the aliases vidcli knows.")
    ] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Download weights from the Hugging Face Hub (resumable; offline with HF_HUB_OFFLINE=1)."""

    def action() -> Any:
        if repo is None and not list_aliases:
            raise UsageError("download needs a repo id or alias", hint="vidcli download --list")
        from vidcli import hub

        if list_aliases:
            return hub.AliasList(hub.list_aliases())
        return hub.download(
            repo,
            include=include,
            exclude=exclude,
            revision=revision,
            local_dir=local_dir,
            token=token,
        )

    run_action(action, as_json=json_output, quiet=quiet, debug=debug)
