"""`vidcli.hub.download` running the real huggingface_hub client against a local Hub server."""

import errno
import hashlib
import json
import os
import subprocess
import sys
from fnmatch import fnmatch

import pytest
from hub_server import VALID_TOKEN, FakeRepo, HubServer, closed_port_url

from vidcli.errors import DownloadError, UsageError
from vidcli.hub import ALIASES, ModelAlias, download, list_aliases, resolve

FILES = {
    "config.json": b'{"latent_channels": 128}',
    "model.safetensors": bytes(range(256)) * 400,
    "extra/notes.txt": b"not weights",
}
REPOS = {
    "org/tiny": FakeRepo(dict(FILES)),
    "org/gated": FakeRepo(dict(FILES), gated=True),
}


@pytest.fixture
def hub(monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with HubServer(
        {name: FakeRepo(dict(r.files), gated=r.gated) for name, r in REPOS.items()}
    ) as s:
        yield s


def fetch(hub, tmp_path, repo="org/tiny", **kwargs):
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    return download(repo, endpoint=hub.url, progress=False, **kwargs)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_download_writes_the_files_into_the_cache(hub, tmp_path):
    result = fetch(hub, tmp_path)
    assert result.repo_id == "org/tiny" and result.revision == "main"
    assert result.commit == REPOS["org/tiny"].sha
    assert result.local_path == tmp_path / "cache/models--org--tiny/snapshots" / result.commit
    assert result.files == sorted((name, len(data)) for name, data in FILES.items())
    for name, data in FILES.items():
        assert (result.local_path / name).read_bytes() == data
    assert sorted(result.downloaded) == sorted(FILES) and not result.from_cache
    # The weights are stored under their sha256, as the Hub's LFS ETag says.
    sha = hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert (tmp_path / "cache/models--org--tiny/blobs" / sha).read_bytes() == FILES[
        "model.safetensors"
    ]
    assert len(hub.file_gets()) == len(FILES)


def test_second_run_fetches_nothing(hub, tmp_path):
    fetch(hub, tmp_path)
    seen = len(hub.requests)
    again = fetch(hub, tmp_path)
    assert again.from_cache and again.files == sorted((n, len(d)) for n, d in FILES.items())
    # Only the revision lookup: no HEAD, no file GET.
    assert [(r.method, r.path) for r in hub.requests[seen:]] == [
        ("GET", "/api/models/org/tiny/revision/main")
    ]


def test_local_dir_and_patterns(hub, tmp_path):
    target = tmp_path / "weights"
    result = fetch(hub, tmp_path, local_dir=target, include=["*.json", "*.safetensors"])
    assert result.local_path == target.resolve()
    assert [name for name, _ in result.files] == ["config.json", "model.safetensors"]
    assert (target / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    assert not (target / "extra").exists()
    assert result.commit == REPOS["org/tiny"].sha
    excluded = fetch(hub, tmp_path, local_dir=target, exclude=["*.safetensors"])
    assert [name for name, _ in excluded.files] == ["config.json", "extra/notes.txt"]
    assert excluded.downloaded == ["extra/notes.txt"]


def test_interrupted_transfer_resumes_with_a_range_request(hub, tmp_path):
    # huggingface_hub writes in chunks of DOWNLOAD_CHUNK_SIZE and resumes after the last full one.
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    weights = bytes(range(251)) * (DOWNLOAD_CHUNK_SIZE // 251 + 40)
    hub.repos["org/tiny"].files["big.safetensors"] = weights
    hub.cut_once["big.safetensors"] = DOWNLOAD_CHUNK_SIZE + 1000
    result = fetch(hub, tmp_path, include=["big.safetensors"])
    assert (result.local_path / "big.safetensors").read_bytes() == weights
    gets = [r for r in hub.file_gets() if r.path.endswith("big.safetensors")]
    assert [r.range for r in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


def test_unknown_repo(hub, tmp_path):
    with pytest.raises(DownloadError, match="repository org/missing not found on http://127") as e:
        fetch(hub, tmp_path, repo="org/missing")
    one_line(e)
    assert "--token" in e.value.hint
    with pytest.raises(DownloadError, match="org/missing not found"):
        fetch(hub, tmp_path, repo="org/missing", token=VALID_TOKEN)  # 404 when authenticated


def test_gated_repo_needs_a_token(hub, tmp_path):
    with pytest.raises(DownloadError, match="org/gated is gated") as e:
        fetch(hub, tmp_path, repo="org/gated")
    one_line(e)
    assert "--token" in e.value.hint and "HF_TOKEN" in e.value.hint
    result = fetch(hub, tmp_path, repo="org/gated", token=VALID_TOKEN)
    assert (result.local_path / "config.json").read_bytes() == FILES["config.json"]
    assert all(r.authorization == f"Bearer {VALID_TOKEN}" for r in hub.requests[-4:])


def test_invalid_token(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(DownloadError, match=r"access denied .*HTTP 401.*token") as e:
        fetch(hub, tmp_path)
    one_line(e)


def test_unknown_revision(hub, tmp_path):
    with pytest.raises(DownloadError, match="org/tiny: revision 'v9' not found") as e:
        fetch(hub, tmp_path, revision="v9")
    one_line(e)


def test_unreachable_endpoint(tmp_path):
    url = closed_port_url()
    with pytest.raises(DownloadError, match=f"cannot reach {url} and org/tiny is not") as e:
        download("org/tiny", endpoint=url, cache_dir=tmp_path, progress=False)
    one_line(e)


def test_unreachable_endpoint_falls_back_to_the_cache(hub, tmp_path):
    first = fetch(hub, tmp_path)
    again = download("org/tiny", endpoint=closed_port_url(), cache_dir=tmp_path / "cache")
    assert again.local_path == first.local_path and again.from_cache


def test_offline_mode_reads_the_cache(hub, tmp_path):
    home = tmp_path / "home"
    first = download("org/tiny", endpoint=hub.url, cache_dir=home / "hub", progress=False)
    seen = len(hub.requests)
    script = (
        "import json; from vidcli.hub import download; from vidcli.errors import DownloadError\n"
        "r = download('org/tiny', progress=False)\n"
        "try:\n    download('org/other', progress=False); err = None\n"
        "except DownloadError as e:\n    err = str(e)\n"
        "print(json.dumps({'path': str(r.local_path), 'files': r.files, 'err': err}))\n"
    )
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub.url}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["path"] == str(first.local_path)
    assert [tuple(f) for f in reply["files"]] == first.files
    assert reply["err"] == (
        "org/other is not (completely) in the local cache and offline mode is on (HF_HUB_OFFLINE=1)"
    )
    assert len(hub.requests) == seen


def test_disk_full_is_one_line(hub, tmp_path, monkeypatch):
    import huggingface_hub.file_download

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", no_space)
    with pytest.raises(DownloadError, match="disk full while downloading org/tiny into") as e:
        fetch(hub, tmp_path, local_dir=tmp_path / "w")
    one_line(e)
    assert "--local-dir" in e.value.hint


def test_alias_gives_repo_and_patterns(hub, tmp_path, monkeypatch):
    monkeypatch.setitem(
        ALIASES, "tiny", ModelAlias("tiny", "org/tiny", ("*.json",), "test repo", "ae:test")
    )
    result = fetch(hub, tmp_path, repo="tiny")
    assert result.repo_id == "org/tiny" and result.files == [
        ("config.json", len(FILES["config.json"]))
    ]
    # Explicit --include replaces the alias's patterns.
    result = fetch(hub, tmp_path, repo="tiny", include=["extra/*"])
    assert [name for name, _ in result.files] == ["extra/notes.txt"]


def test_patterns_matching_nothing_are_an_error(hub, tmp_path):
    with pytest.raises(DownloadError, match=r"org/tiny: no file matched include=\['\*.ckpt'\]"):
        fetch(hub, tmp_path, include=["*.ckpt"])


def test_resolve_and_unknown_names():
    assert resolve("t5-v1_1-xxl")[0] == "google/t5-v1_1-xxl"
    assert resolve("some/repo") == ("some/repo", None)
    with pytest.raises(UsageError, match="'t5-xxl' is neither an alias nor a Hub repo id"):
        resolve("t5-xxl")


def test_list_aliases():
    aliases = list_aliases()
    assert [a.name for a in aliases] == sorted(a.name for a in aliases)
    repos = {a.name: a.repo_id for a in aliases}
    assert repos["opensora-v2-hcae"] == "hpcai-tech/Open-Sora-v2-Video-DC-AE"
    assert repos["opensora-v2"] == "hpcai-tech/Open-Sora-v2"
    assert repos["dc-ae-f32c32"] == "mit-han-lab/dc-ae-f32c32-in-1.0-diffusers"
    assert repos["dc-ae-f32c32-sana"] == "mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers"
    assert repos["t5-v1_1-xxl"] == "google/t5-v1_1-xxl"
    assert repos["clip-vit-large-patch14"] == "openai/clip-vit-large-patch14"
    for alias in aliases:
        assert alias.include and alias.description
        # Weights only as safetensors: nothing vidcli would have to unpickle.
        pickles = ["pytorch_model.bin", "model.pt", "weights.ckpt", "diffusion_pytorch_model.bin"]
        assert not [p for p in alias.include for name in pickles if fnmatch(name, p)], alias.name


def test_no_progress_output_when_disabled(hub, tmp_path, capfd):
    fetch(hub, tmp_path)
    assert capfd.readouterr().err == ""
