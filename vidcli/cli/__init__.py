"""The `vidcli` command line: each command turns its options into a recipe and calls one stage.

One module per command (`download`, `prepare_data`, `train`, `generate`, `benchmark`); the table
below registers them on the app, in the order `vidcli --help` lists them. No model, data or
training logic lives here. Stage modules are imported inside the commands so that
`vidcli --help` answers without importing torch.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vidcli import __version__
from vidcli.cli import benchmark, download, generate, prepare_data, train
from vidcli.cli.train import bare_resume_means_latest

__all__ = ["app", "bare_resume_means_latest", "main"]

app = typer.Typer(
    name="vidcli",
    help="Train and run text-to-video diffusion models in the latent space of "
    "high-compression video autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)

app.command("download", epilog=download.EXAMPLES)(download.download)
app.command("prepare-data", epilog=prepare_data.EXAMPLES)(prepare_data.prepare_data)
app.command("train-ae", epilog=train.TRAIN_AE_EXAMPLES)(train.train_ae)
app.command("train-dit", epilog=train.TRAIN_DIT_EXAMPLES)(train.train_dit)
app.command("generate", epilog=generate.EXAMPLES)(generate.generate)
app.command("benchmark", epilog=benchmark.EXAMPLES)(benchmark.benchmark)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"vidcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """vidcli: high-compression latent video diffusion from the shell.

    Every command takes `--json` (one JSON object on stdout), `--quiet` and `--debug`;
    exit codes: 0 ok, 1 runtime failure, 2 usage or recipe error.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=bare_resume_means_latest(sys.argv[1:] if argv is None else argv))
