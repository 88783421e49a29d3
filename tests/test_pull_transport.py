"""The blob transfer itself: the http.client path (redirects, dropped connections, 401/429 on the blob GET),
the httpx path through a proxy, and the sink that hashes and writes on its own thread."""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import random
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from mr_notebook.errors import PullError
from mr_notebook.store import Store
from mr_notebook.store.pull import PullProgress, pull
from mr_notebook.store.pull.sink import SYNC_EVERY, HashingWriter
from mr_notebook.testing.registry import OCI_MANIFEST, AuthProxy, LocalRegistry

Handler = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def _server(handle: Handler, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """An HTTP/1.1 (or HTTPS) server on 127.0.0.1 whose GETs ``handle`` answers; yields its ``host:port``."""

    class Serve(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            handle(self)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Serve)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    handler.send_response(status)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def _forward(handler: BaseHTTPRequestHandler, host: str, path: str) -> None:
    """Answer with what ``host`` answers for ``path`` (manifests, configs, blobs)."""
    connection = http.client.HTTPConnection(host, timeout=30)
    keep = {k: v for k, v in handler.headers.items() if k.lower() in {"accept", "range"}}
    connection.request("GET", path, headers=keep)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    passed = {k: v for k, v in response.getheaders() if k.lower() not in {"content-length", "connection"}}
    _reply(handler, response.status, body, passed)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_redirected_blob_without_authorization_resumes_after_a_dropped_connection(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    data = tiny_model.read_bytes() + random.Random(1).randbytes(3 * 1024 * 1024 + 17)
    local_registry.push_model("ai/cdn", "v1", [data])
    digest = _sha(data)
    cdn_log: list[tuple[str, str | None, str | None]] = []
    front_log: list[tuple[str, str | None]] = []

    def cdn(handler: BaseHTTPRequestHandler) -> None:
        rng = handler.headers.get("Range")
        cdn_log.append((handler.path, handler.headers.get("Authorization"), rng))
        if rng is None:  # the first answer breaks off half way, like a dropped connection
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.close_connection = True
            return
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        handler.send_response(206)  # the rest, chunked (no Content-Length)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for offset in range(start, len(data), 500_000):
            piece = data[offset : offset + 500_000]
            handler.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    with _server(cdn) as cdn_host:
        cdn_url = f"http://localhost:{cdn_host.rsplit(':', 1)[1]}"

        def front(handler: BaseHTTPRequestHandler) -> None:
            front_log.append((handler.path, handler.headers.get("Authorization")))
            if handler.headers.get("Authorization") != "Basic Y2k6czNjcmV0":  # ci:s3cret
                return _reply(handler, 401, b"{}", {"WWW-Authenticate": 'Basic realm="front"'})
            if handler.path.endswith(f"/blobs/{digest}"):
                return _reply(handler, 307, b"", {"Location": f"{cdn_url}/data/{digest}?signature=abc"})
            _forward(handler, local_registry.host, handler.path)

        with _server(front) as front_host:
            result = pull(
                Store(tmp_path), f"{front_host}/ai/cdn:v1", env={"MR_NOTEBOOK_REGISTRY_AUTH": f"{front_host}=ci:s3cret"}
            )

    assert store_bytes(tmp_path, result.record.files[0].digest) == data
    assert result.downloaded == len(data)
    blob_requests = [auth for path, auth in front_log if path.endswith(f"/blobs/{digest}")]
    assert blob_requests == ["Basic Y2k6czNjcmV0", "Basic Y2k6czNjcmV0"]
    assert cdn_log == [
        (f"/data/{digest}?signature=abc", None, None),
        (f"/data/{digest}?signature=abc", None, f"bytes={len(data) // 2}-"),
    ]


def store_bytes(home: Path, digest: str) -> bytes:
    return Store(home).blob_path(digest).read_bytes()


def test_blob_get_renews_an_expired_token_and_honours_retry_after(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    local_registry.push_model("ai/renew", "v1", [tiny_model])
    digest = _sha(tiny_model.read_bytes())
    with AuthProxy(local_registry.host) as proxy:

        def on_progress(event: PullProgress) -> None:
            if event.status == "downloading" and event.digest == digest and event.completed == 0:
                proxy.tokens.clear()  # the token expires between the manifest and the blob
                proxy.retry_after_once = 0.2

        result = pull(Store(tmp_path), f"{proxy.host}/ai/renew:v1", progress=on_progress)
    blob = [status for _, path, status in proxy.log if path.endswith(f"/blobs/{digest}")]
    assert blob == [401, 429, 200]
    assert store_bytes(tmp_path, digest) == tiny_model.read_bytes() and result.record.tags


def test_proxy_variables_keep_the_httpx_path(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_registry.push_model("ai/proxied", "v1", [tiny_model])
    seen: list[str] = []

    def forward_proxy(handler: BaseHTTPRequestHandler) -> None:
        seen.append(handler.path)  # an absolute URI: what clients send to a proxy
        target = urlsplit(handler.path)
        _forward(handler, target.netloc, target.path + (f"?{target.query}" if target.query else ""))

    with _server(forward_proxy) as proxy_host:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://{proxy_host}")
        result = pull(Store(tmp_path), f"{local_registry.host}/ai/proxied:v1")
    digest = result.record.files[0].digest
    assert f"{local_registry.url}/v2/ai/proxied/blobs/{digest}" in seen
    assert store_bytes(tmp_path, digest) == tiny_model.read_bytes()


def test_https_redirect_from_a_plain_http_registry_is_verified(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loopback registry gets plain HTTP, but a redirect to HTTPS is verified with httpx's settings."""
    local_registry.push_model("ai/tls", "v1", [tiny_model])
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subject = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            *subject,
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    gguf = _sha(tiny_model.read_bytes())
    manifest = httpx.get(f"{local_registry.url}/v2/ai/tls/manifests/v1", headers={"Accept": OCI_MANIFEST}).json()
    redirected = {gguf}
    secure_log: list[str] = []

    def secure_server(handler: BaseHTTPRequestHandler) -> None:
        secure_log.append(handler.path.rsplit("/", 1)[-1])
        _forward(handler, local_registry.host, handler.path)

    with _server(secure_server, tls) as secure:
        secure_url = f"https://localhost:{secure.rsplit(':', 1)[1]}"

        def front(handler: BaseHTTPRequestHandler) -> None:
            if handler.path.rsplit("/", 1)[-1] in redirected:
                return _reply(handler, 307, b"", {"Location": f"{secure_url}{handler.path}"})
            _forward(handler, local_registry.host, handler.path)

        with _server(front) as front_host:
            monkeypatch.delenv("SSL_CERT_DIR", raising=False)
            monkeypatch.setenv("SSL_CERT_FILE", ssl.get_default_verify_paths().openssl_cafile)
            with pytest.raises(PullError, match=r"(?i)certificate verify failed"):  # the blob, over http.client
                pull(Store(tmp_path / "a"), f"{front_host}/ai/tls:v1")
            assert Store(tmp_path / "a").list() == [] and secure_log == []

            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            redirected.add(manifest["config"]["digest"])  # the config comes over httpx
            record = pull(Store(tmp_path / "b"), f"{front_host}/ai/tls:v1").record
    assert secure_log == [manifest["config"]["digest"], gguf]
    assert store_bytes(tmp_path / "b", gguf) == tiny_model.read_bytes() and record.config["parameters"] == "1B"


def _writer(path: Path, handle: io.FileIO, events: list[int]) -> HashingWriter:
    return HashingWriter(handle, path, lambda count, size: events.append(size), lambda: None)


def test_sink_receives_hashes_writes_and_rewinds(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(SYNC_EVERY + 5 * 1024 * 1024 + 3)  # long enough to sync on the way
    source = io.BytesIO(data)
    path = tmp_path / "blob.incomplete"
    events: list[int] = []
    with open(path, "ab", buffering=0) as handle, _writer(path, handle, events) as writer:
        assert writer.receive(lambda view: source.readinto(view[:700_000])) == len(data)
        assert writer.tell() == len(data) and writer.digest == _sha(data)
        writer.seek(1000)
        assert writer.tell() == 1000 and writer.digest == _sha(data[:1000])
        for offset in range(1000, len(data), 65536):  # small writes, as httpx hands them over
            writer.write(data[offset : offset + 65536])
        writer.write(bytearray(b"tail"))
        assert writer.digest == _sha(data + b"tail")
    assert path.read_bytes() == data + b"tail"
    assert events == sorted(events[: events.index(1000)]) + sorted(events[events.index(1000) :])
    assert writer.downloaded == 2 * len(data) - 1000 + 4


def test_sink_keeps_bytes_read_before_a_failure_and_reports_disk_errors(tmp_path: Path) -> None:
    path = tmp_path / "blob.incomplete"
    fed = [b"x" * 1000, b"y" * 24]

    def read(view: memoryview) -> int:
        if not fed:
            raise ConnectionResetError("dropped")
        piece = fed.pop(0)
        view[: len(piece)] = piece
        return len(piece)

    with open(path, "ab", buffering=0) as handle, _writer(path, handle, []) as writer:
        with pytest.raises(ConnectionResetError):
            writer.receive(read)
        assert writer.tell() == 1024
    assert path.read_bytes() == b"x" * 1000 + b"y" * 24

    full = tmp_path / "full.incomplete"
    full.symlink_to("/dev/full")
    with open(full, "ab", buffering=0) as handle, pytest.raises(OSError) as info, _writer(full, handle, []) as writer:
        writer.write(b"z" * 100)  # queued; the disk thread's ENOSPC surfaces when the writer closes
    assert info.value.errno == errno.ENOSPC
