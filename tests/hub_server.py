"""A local server speaking the part of the Hugging Face Hub HTTP API that `snapshot_download` uses.

huggingface_hub 2.4.0 calls, for a model repo:
  GET  /api/models/{repo}/revision/{rev}        -> {"id", "sha", "siblings"}   (repo_info)
  GET  /api/models/{repo}/tree/{commit}?recursive=True
                                                -> [{"type": "file", "path", "size", "oid", "lfs"?}]
  HEAD /{repo}/resolve/{commit}/{path}          -> X-Repo-Commit, ETag / X-Linked-Etag, sizes
  GET  /{repo}/resolve/{commit}/{path}          -> the bytes (Range honoured: resume)
Errors carry the Hub's X-Error-Code header (RepoNotFound, GatedRepo, RevisionNotFound,
EntryNotFound), which huggingface_hub maps to its exception classes. No X-Xet-* header is ever
sent, so the client downloads over plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

VALID_TOKEN = "hf_valid_test_token"
LFS_SUFFIXES = (".safetensors", ".bin")


@dataclass
class FakeRepo:
    """One model repository at one commit."""

    files: dict[str, bytes]
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    """Gated repos list their files to anyone but serve them only with VALID_TOKEN."""


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubServer:
    """`with HubServer(repos) as hub:` serves `repos` at `hub.url` and records `hub.requests`."""

    repos: dict[str, FakeRepo]
    requests: list[Request] = field(default_factory=list)
    cut_once: dict[str, int] = field(default_factory=dict)
    """file -> bytes sent by its first full GET before the connection closes (to test resuming)."""

    def __enter__(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def file_gets(self) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path]


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


_API = re.compile(r"^/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            auth = self.headers.get("Authorization")
            hub.requests.append(Request(self.command, path, self.headers.get("Range"), auth))
            if auth is not None and auth != f"Bearer {VALID_TOKEN}":
                return self._error(401, None, "Invalid credentials in Authorization header", body)
            if match := _API.match(path):
                repo_id, kind, rev = match.groups()
                return self._api(repo_id, kind, rev, auth is not None, body)
            if match := _RESOLVE.match(path):
                return self._resolve(*match.groups(), auth is not None, body)
            return self._error(404, None, "Not found", body)

        def _repo(self, repo_id: str, rev: str, authenticated: bool, body: bool):
            repo = hub.repos.get(repo_id)
            if repo is None:
                # The Hub answers 401 to anonymous callers so private repos do not leak.
                status = 404 if authenticated else 401
                self._error(status, "RepoNotFound", "Repository not found", body)
                return None
            if rev not in ("main", repo.sha):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", body)
                return None
            return repo

        def _api(self, repo_id: str, kind: str, rev: str, authenticated: bool, body: bool):
            repo = self._repo(repo_id, rev, authenticated, body)
            if repo is None:
                return
            if kind == "revision":
                payload = {
                    "id": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": name} for name in repo.files],
                }
            else:
                payload = [_tree_entry(name, data) for name, data in repo.files.items()]
            data = json.dumps(payload).encode()
            self._send(200, {"Content-Type": "application/json"}, data, body)

        def _resolve(self, repo_id: str, rev: str, name: str, authenticated: bool, body: bool):
            repo = self._repo(repo_id, rev, authenticated, body)
            if repo is None:
                return
            if repo.gated and not authenticated:
                return self._error(401, "GatedRepo", "Access to this model is restricted", body)
            if name not in repo.files:
                return self._error(404, "EntryNotFound", "Entry not found", body, repo.sha)
            data = repo.files[name]
            headers = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
            if name.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                headers |= {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"'}
                headers["X-Linked-Size"] = str(len(data))
            else:
                headers["ETag"] = f'"{git_blob_oid(data)}"'
            start = 0
            status = 200
            if body and (wanted := self.headers.get("Range")):
                start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if body and status == 200 and name in hub.cut_once:
                cut = hub.cut_once.pop(name)
                headers["Content-Length"] = str(len(data))
                self.send_response(200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self._send(status, headers, data[start:], body)

        def _error(self, status, code, message, body, commit=None) -> None:
            headers = {"X-Error-Message": message, "Content-Type": "application/json"}
            if code is not None:
                headers["X-Error-Code"] = code
            if commit is not None:
                headers["X-Repo-Commit"] = commit
            self._send(status, headers, json.dumps({"error": message}).encode(), body)

        def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    return Handler


def _tree_entry(name: str, data: bytes) -> dict:
    entry = {"type": "file", "path": name, "size": len(data), "oid": git_blob_oid(data)}
    if name.endswith(LFS_SUFFIXES):
        sha256 = hashlib.sha256(data).hexdigest()
        entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
    return entry
