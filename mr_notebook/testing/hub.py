"""A local Hugging Face Hub for tests, reached through ``HF_ENDPOINT``.

It implements the routes huggingface_hub calls for a model pull: ``/api/models/{repo}[/revision/{rev}]``
(with ``blobs=1``: sizes and LFS sha256), ``/api/models/{repo}/tree/{rev}[/{path}]``, and
``/{repo}/resolve/{rev}/{file}`` (GET and HEAD, ``ETag``, ``X-Repo-Commit``, ``X-Linked-Etag``,
``X-Linked-Size``, ``Range`` → 206), with the Hub's error headers (``X-Error-Code``). It counts the body bytes
it serves per file, can slow bodies down (``rate``), serve altered bytes (``corrupt``) and require a token.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    token: str | None = None
    corrupt: set[str] = field(default_factory=set)
    flood: dict[str, int] = field(default_factory=dict)  # file → zero bytes served after it (a lying host)


class LocalHub:
    """A threaded HTTP server on 127.0.0.1 that answers like huggingface.co for model repositories."""

    def __init__(self, *, rate: float | None = None) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.rate = rate
        self.served: dict[str, int] = {}
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes | Path],
        *,
        token: str | None = None,
        corrupt: set[str] | None = None,
        flood: dict[str, int] | None = None,
    ) -> HubRepo:
        """Publish a repository (file path → content); ``corrupt`` files are served with a flipped byte,
        ``flood`` files followed by that many more bytes than the metadata declares."""
        content = {name: data.read_bytes() if isinstance(data, Path) else data for name, data in files.items()}
        sha = hashlib.sha1(
            json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in content.items())).encode()
        ).hexdigest()
        repo = HubRepo(repo_id, content, sha, token, set(corrupt or ()), dict(flood or {}))
        self.repos[repo_id.lower()] = repo
        return repo

    def served_bytes(self, filename: str) -> int:
        with self._lock:
            return self.served.get(filename, 0)

    def _count(self, filename: str, count: int) -> None:
        with self._lock:
            self.served[filename] = self.served.get(filename, 0) + count

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: dict[str, str] | None = None,
                head: bool = False,
                length: int | None = None,
            ) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                hub.log.append((self.command, self.path, status))

            def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
                body = json.dumps({"error": message}).encode()
                self._send(
                    status,
                    body,
                    {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"},
                    head,
                )

            def _repo(self, repo_id: str, head: bool = False) -> HubRepo | None:
                repo = hub.repos.get(repo_id.lower())
                if repo is None:
                    self._error(404, "RepoNotFound", "Repository not found", head)
                    return None
                if repo.token is not None and self.headers.get("Authorization") != f"Bearer {repo.token}":
                    self._error(401, "RepoNotFound", "Invalid username or password.", head)
                    return None
                return repo

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                api = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?$", path)
                tree = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$", path)
                resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if tree:
                    return self._tree(tree.group(1), tree.group(2), tree.group(3) or "", head)
                if api:
                    return self._info(api.group(1), api.group(2), head)
                if resolve:
                    return self._resolve(resolve.group(1), resolve.group(2), resolve.group(3), head)
                self._error(404, "NotFound", f"no route {path}", head)

            def _revision_ok(self, repo: HubRepo, revision: str | None, head: bool) -> bool:
                if revision in (None, "main", repo.sha):
                    return True
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
                return False

            def _info(self, repo_id: str, revision: str | None, head: bool) -> None:
                repo = self._repo(repo_id, head)
                if repo is None or not self._revision_ok(repo, revision, head):
                    return
                siblings = [
                    {
                        "rfilename": name,
                        "size": len(data),
                        "blobId": hashlib.sha1(data).hexdigest(),
                        "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
                    }
                    for name, data in sorted(repo.files.items())
                ]
                body = {
                    "_id": repo.sha[:24],
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": repo.sha,
                    "private": repo.token is not None,
                    "gated": False,
                    "disabled": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": ["gguf"],
                    "library_name": "gguf",
                    "siblings": siblings,
                    "lastModified": "2025-03-01T12:00:00.000Z",
                }
                self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

            def _tree(self, repo_id: str, revision: str, prefix: str, head: bool) -> None:
                repo = self._repo(repo_id, head)
                if repo is None or not self._revision_ok(repo, revision, head):
                    return
                entries = [
                    {
                        "type": "file",
                        "oid": hashlib.sha1(data).hexdigest(),
                        "size": len(data),
                        "path": name,
                        "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134},
                    }
                    for name, data in sorted(repo.files.items())
                    if name.startswith(prefix)
                ]
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)

            def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
                repo = self._repo(repo_id, head)
                if repo is None or not self._revision_ok(repo, revision, head):
                    return
                data = repo.files.get(filename)
                if data is None:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist", head)
                sha256 = hashlib.sha256(data).hexdigest()
                if filename in repo.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                headers = {
                    "ETag": f'"{sha256}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                    "X-Repo-Commit": repo.sha,
                    "Accept-Ranges": "bytes",
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": f'attachment; filename="{filename.rsplit("/", 1)[-1]}"',
                }
                start, end, status = 0, len(data) - 1, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2)), end) if match.group(2) else end
                    if start >= len(data):
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, head)
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                body = data[start : end + 1]
                if filename in repo.flood:  # more than the size declared by the metadata and X-Linked-Size
                    body += bytes(repo.flood[filename])
                    headers.pop("Content-Range", None)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                hub.log.append((self.command, self.path, status))
                if head:
                    return
                self._stream(filename, body)

            def _stream(self, filename: str, body: bytes) -> None:
                started, sent, step = time.monotonic(), 0, 16 * 1024
                try:
                    for offset in range(0, len(body), step):
                        chunk = body[offset : offset + step]
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        hub._count(filename, len(chunk))
                        if hub.rate:
                            ahead = sent / hub.rate - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler
