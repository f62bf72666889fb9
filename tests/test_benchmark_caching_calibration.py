"""`vidcli benchmark --caching --calibrate` where the calibration cannot be written (by default
beside the DiT, i.e. inside a read-only installed package): one line naming the file and
--calibration FILE, exit 2, before any model is loaded or calibrated."""

import errno
import tempfile

import pytest
from typer.testing import CliRunner

from vidcli import generate
from vidcli.benchmark import caching
from vidcli.cli import app
from vidcli.demo import DEMO_DIR
from vidcli.errors import UsageError
from vidcli.sampling.cache.calibration import FILENAME


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the calibration file was checked")

    monkeypatch.setattr(generate, "load_pipeline", refuse)


@pytest.fixture
def read_only(monkeypatch):
    """Every new file is refused as on a read-only install (tests run as root, which ignores
    permission bits, so chmod would not do it)."""

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


def test_default_calibration_in_a_read_only_package_is_a_usage_error(no_model, read_only):
    options = caching.CachingOptions(steps=4, calibrate=True)
    with pytest.raises(UsageError) as caught:
        caching.run(options)
    message = str(caught.value)
    assert str(DEMO_DIR / "dit" / FILENAME) in message
    assert "Permission denied" in message and "--calibration FILE" in message


def test_calibration_under_a_regular_file_is_a_usage_error(tmp_path, no_model):
    (tmp_path / "file.txt").write_text("not a folder")
    target = tmp_path / "file.txt" / "cal.json"
    with pytest.raises(UsageError, match="--calibration FILE") as caught:
        caching.run(caching.CachingOptions(steps=4, calibrate=True, calibration=target))
    assert str(target) in str(caught.value)


def test_cli_reports_one_line_and_exit_2(no_model, read_only):
    result = CliRunner().invoke(app, ["benchmark", "--caching", "--calibrate", "--steps", "4"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert str(DEMO_DIR / "dit" / FILENAME) in lines[0] and "--calibration FILE" in lines[0]


def test_a_write_failing_after_calibration_is_the_same_usage_error(tmp_path, monkeypatch):
    """The folder was writable at the start but the write fails at the end (e.g. remounted)."""
    from types import SimpleNamespace

    from vidcli.sampling.cache.calibration import CacheCalibration

    ae = SimpleNamespace(latent_shape=lambda *size: (4, 2, 8, 8))
    monkeypatch.setattr(generate, "load_pipeline", lambda recipe, place: SimpleNamespace(ae=ae))
    monkeypatch.setattr(generate, "_valid_size", lambda ae, t, h, w, fit: (t, h, w))
    monkeypatch.setattr(caching, "calibrate", lambda *args: CacheCalibration())

    def refuse(calibration, path):
        raise PermissionError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(caching, "save_calibration", refuse)
    target = tmp_path / "cal.json"
    options = caching.CachingOptions(steps=4, methods=["none"], calibrate=True, calibration=target)
    with pytest.raises(UsageError, match=r"Read-only file system.*--calibration FILE") as caught:
        caching.run(options)
    assert str(target) in str(caught.value)
