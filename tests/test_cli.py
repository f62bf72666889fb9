"""CLI conventions shared by every command: help, version, exit codes, one-line errors, --json."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vidcli import __version__
from vidcli.cli import app

COMMANDS = ["download", "prepare-data", "train-ae", "train-dit", "generate", "benchmark"]


@pytest.fixture
def runner():
    return CliRunner()


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"vidcli {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(runner, command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples" in result.stdout
    assert f"vidcli {command}" in result.stdout


def test_top_level_help_lists_all_commands(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_recipe_typo_exits_2_with_one_line(runner, tmp_path):
    recipe = tmp_path / "typo.toml"
    recipe.write_text("[train]\nlrr = 1e-4\n")
    result = runner.invoke(app, ["train-dit", str(recipe)])
    assert result.exit_code == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert "unknown key 'lrr'" in error_lines[0] and "did you mean 'lr'" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_set_wrong_type_exits_2_naming_the_type(runner, tmp_path):
    recipe = tmp_path / "ok.toml"
    recipe.write_text("[train]\nlr = 1e-4\n")
    result = runner.invoke(app, ["train-ae", str(recipe), "--set", "train.lr=abc"])
    assert result.exit_code == 2
    assert "expected a number (float)" in result.stderr


def test_print_recipe_prints_resolved_toml(runner, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nlr = 0.25\n")
    result = runner.invoke(
        app, ["train-dit", str(recipe), "--set", "train.max_steps=3", "--print-recipe"]
    )
    assert result.exit_code == 0, result.output
    from vidcli.recipe import recipe_from_dict, tomllib

    resolved = recipe_from_dict(tomllib.loads(result.stdout))
    assert resolved.train.lr == 0.25 and resolved.train.max_steps == 3


def test_debug_shows_traceback(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("VIDCLI_DEBUG", raising=False)
    recipe = tmp_path / "typo.toml"
    recipe.write_text("[train]\nlrr = 1\n")
    result = runner.invoke(app, ["train-dit", str(recipe), "--debug"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr


def test_usage_error_for_missing_argument(runner):
    result = runner.invoke(app, ["download"])
    assert result.exit_code == 2
    assert "needs a repo id or alias" in result.stderr


def test_console_script_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "vidcli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"vidcli {__version__}"


def test_json_result_is_one_object_on_stdout(capsys):
    from dataclasses import dataclass
    from pathlib import Path

    from vidcli.console import print_result

    @dataclass
    class Result:
        path: Path
        sizes: tuple[int, ...]

    print_result(Result(Path("a/b"), (1, 2)), as_json=True)
    assert json.loads(capsys.readouterr().out) == {"path": "a/b", "sizes": [1, 2]}
