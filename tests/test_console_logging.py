"""Optional dependencies' import-time warnings stay off stderr unless --debug."""

import importlib.util
import logging
import os
import subprocess
import sys

import pytest

from vidcli import console

IMPORT_DIFFUSERS_QUANTIZERS = (
    "from vidcli.console import configure; configure(); import diffusers.quantizers.auto"
)


def test_configure_silences_import_noise_below_errors(monkeypatch):
    monkeypatch.delenv(console.DEBUG_ENV, raising=False)
    console.configure()
    child = logging.getLogger("torchao.ops")
    assert not child.isEnabledFor(logging.WARNING) and child.isEnabledFor(logging.ERROR)
    monkeypatch.setenv(console.DEBUG_ENV, "1")
    console.configure()
    assert child.isEnabledFor(logging.WARNING)
    monkeypatch.delenv(console.DEBUG_ENV)
    console.configure()


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")
def test_diffusers_import_with_torchao_writes_nothing_to_stderr():
    env_without_debug = {k: v for k, v in os.environ.items() if k != console.DEBUG_ENV}
    run = subprocess.run(
        [sys.executable, "-c", IMPORT_DIFFUSERS_QUANTIZERS],
        capture_output=True,
        text=True,
        env=env_without_debug,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "torchao" not in run.stderr, run.stderr
