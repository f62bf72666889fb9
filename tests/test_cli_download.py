"""`vidcli download` end to end: a subprocess with HF_ENDPOINT pointing at the local Hub server."""

import json
import os
import subprocess
import sys

import pytest
from hub_server import FakeRepo, HubServer, closed_port_url

FILES = {"config.json": b'{"a": 1}', "model.safetensors": bytes(range(256)) * 64}


def vidcli(*args: str, endpoint: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "VIDCLI_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_ETAG_TIMEOUT="3")
    return subprocess.run(
        [sys.executable, "-m", "vidcli", *args], capture_output=True, text=True, env=env
    )


@pytest.fixture
def hub():
    with HubServer({"org/tiny": FakeRepo(dict(FILES))}) as server:
        yield server


def test_download_writes_files_then_is_a_no_op(hub, tmp_path):
    target = tmp_path / "weights"
    first = vidcli(
        "download",
        "org/tiny",
        "--local-dir",
        str(target),
        "--json",
        endpoint=hub.url,
        home=tmp_path / "home",
    )
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert sorted(result["files"]) == sorted([name, len(data)] for name, data in FILES.items())
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data
    gets_after_first = len(hub.file_gets())

    second = vidcli(
        "download", "org/tiny", "--local-dir", str(target), endpoint=hub.url, home=tmp_path / "home"
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == str(target)
    assert len(hub.file_gets()) == gets_after_first  # nothing transferred again


def test_unreachable_endpoint_exits_1_with_one_line(tmp_path):
    done = vidcli("download", "org/tiny", endpoint=closed_port_url(), home=tmp_path / "home")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "org/tiny" in errors[0]
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_list_json_is_valid(tmp_path):
    done = vidcli("download", "--list", "--json", endpoint="http://127.0.0.1:9", home=tmp_path)
    assert done.returncode == 0, done.stderr
    aliases = {a["name"]: a for a in json.loads(done.stdout)["aliases"]}
    assert aliases["opensora-v2-hcae"]["repo_id"] == "hpcai-tech/Open-Sora-v2-Video-DC-AE"
    assert "t5-v1_1-xxl" in aliases


@pytest.mark.parametrize("quiet", [["--quiet"], []])
def test_no_progress_bars_when_quiet_or_stderr_is_not_a_terminal(hub, tmp_path, quiet):
    done = vidcli(
        "download",
        "org/tiny",
        "--local-dir",
        str(tmp_path / "weights"),
        *quiet,
        endpoint=hub.url,
        home=tmp_path / "home",
    )
    assert done.returncode == 0, done.stderr
    # stderr is a pipe here: bars (tqdm's "Fetching 2 files: 100%|...") are for terminals only.
    assert "%|" not in done.stderr and "Fetching" not in done.stderr, done.stderr
    if quiet:
        assert done.stderr == ""
    assert done.stdout.strip() == str(tmp_path / "weights")
