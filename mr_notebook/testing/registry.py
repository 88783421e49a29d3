"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution) on 127.0.0.1.

:class:`LocalRegistry` runs the registry on a free port with a temporary storage folder, pushes Docker Model
Runner artifacts through the registry's HTTP API (blob upload POST/PUT, manifest PUT) and reads the
registry's own JSON request log to tell how many bytes it served per request. :class:`AuthProxy` is an HTTP
front that implements the Docker token protocol (401 + ``WWW-Authenticate: Bearer``, a ``/token``
endpoint), can slow responses down (to interrupt a pull half way) and answer 429 + ``Retry-After``.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from mr_notebook.testing.servers import LoopbackServer

REGISTRY_BINARY = "/usr/bin/docker-registry"
MODEL_CONFIG_TYPE = "application/vnd.docker.ai.model.config.v0.1+json"
GGUF_TYPE = "application/vnd.docker.ai.gguf.v3"
CHAT_TEMPLATE_TYPE = "application/vnd.docker.ai.chat.template.jinja"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1:<free port>, storing under ``root``."""

    def __init__(self, root: Path, binary: str = REGISTRY_BINARY) -> None:
        self.root = Path(root)
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> LocalRegistry:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} is missing: apt-get install -y docker-registry")
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.root / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  accesslog:\n    disabled: true\n  level: info\n  formatter: json\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
        )
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process owns it until stop()
        self.process = subprocess.Popen([self.binary, "serve", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/v2/", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer within {timeout}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it served

    def requests(self) -> list[dict[str, Any]]:
        """The registry's completed requests (method, uri, status, bytes written), oldest first."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if '"response completed"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            entries.append(
                {
                    "method": entry.get("http.request.method"),
                    "uri": entry.get("http.request.uri", ""),
                    "status": entry.get("http.response.status"),
                    "written": int(entry.get("http.response.written", 0)),
                }
            )
        return entries

    def served_bytes(self, digest: str) -> int:
        """Body bytes the registry sent for GETs of blob ``digest`` so far."""
        return sum(
            e["written"]
            for e in self.requests()
            if e["method"] == "GET" and e["uri"].split("?")[0].endswith(f"/blobs/{digest}")
        )

    def blob_data_path(self, digest: str) -> Path:
        """Where the registry keeps a blob's bytes (tests corrupt it to fake a bad registry)."""
        hexd = digest.removeprefix("sha256:")
        return self.root / "data" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    # ------------------------------------------------------------------ pushing

    def push_blob(self, repository: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` (monolithic POST + PUT); returns its OCI descriptor (digest, size)."""
        digest = sha256_bytes(data)
        with httpx.Client(base_url=self.url, timeout=60.0) as client:
            start = client.post(f"/v2/{repository}/blobs/uploads/")
            start.raise_for_status()
            location = start.headers["Location"]
            # Append: the upload URL already carries the registry's _state query parameter.
            separator = "&" if "?" in location else "?"
            done = client.put(
                f"{location}{separator}digest={digest}",
                content=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            done.raise_for_status()
        return {"digest": digest, "size": len(data)}

    def push_manifest(
        self, repository: str, reference: str, manifest: dict[str, Any], media_type: str = OCI_MANIFEST
    ) -> str:
        body = json.dumps(manifest).encode()
        response = httpx.put(
            f"{self.url}/v2/{repository}/manifests/{reference}",
            content=body,
            headers={"Content-Type": media_type},
            timeout=30.0,
        )
        response.raise_for_status()
        return sha256_bytes(body)

    def push_model(
        self,
        repository: str,
        tag: str,
        ggufs: Sequence[Path | bytes],
        *,
        chat_template: str | None = None,
        config: dict[str, Any] | None = None,
        layer_type: str = GGUF_TYPE,
        config_type: str = MODEL_CONFIG_TYPE,
    ) -> str:
        """Push GGUF file(s) in Docker Model Runner's layout; returns the manifest digest."""
        layers = []
        for number, item in enumerate(ggufs, 1):
            data = item.read_bytes() if isinstance(item, Path) else item
            descriptor = self.push_blob(repository, data)
            title = item.name if isinstance(item, Path) else f"model-{number:05d}.gguf"
            layers.append(
                {"mediaType": layer_type, **descriptor, "annotations": {"org.opencontainers.image.title": title}}
            )
        if chat_template is not None:
            layers.append({"mediaType": CHAT_TEMPLATE_TYPE, **self.push_blob(repository, chat_template.encode())})
        document = {
            "config": {
                "format": "gguf",
                "quantization": "Q8_0",
                "parameters": "1B",
                "architecture": "llama",
                "size": "1 MiB",
                "context_size": 512,
                **(config or {}),
            },
            "descriptor": {"created": "2025-03-01T12:00:00.123456789Z"},
            "rootfs": {"type": "rootfs", "diff_ids": [layer["digest"] for layer in layers]},
        }
        config_descriptor = self.push_blob(repository, json.dumps(document).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, **config_descriptor},
            "layers": layers,
        }
        return self.push_manifest(repository, tag, manifest)


class AuthProxy(LoopbackServer):
    """A reverse proxy in front of a registry: Docker token auth, throttling, one-shot 429s.

    ``users`` maps user → password for the token endpoint; with ``anonymous=True`` a token is given to
    anyone (Docker Hub's behaviour for public images). ``rate`` (bytes/s) slows every response body.
    """

    def __init__(
        self, upstream: str, *, users: dict[str, str] | None = None, anonymous: bool = True, rate: float | None = None
    ) -> None:
        self.upstream = upstream
        self.users = users or {}
        self.anonymous = anonymous
        self.rate = rate
        self.retry_after_once: float | None = None
        self.tokens: set[str] = set()
        self.log: list[tuple[str, str, int]] = []
        super().__init__(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                proxy.log.append((self.command, self.path, status))

            def do_GET(self) -> None:
                if self.path.startswith("/token"):
                    return self._token()
                auth = self.headers.get("Authorization", "")
                if not (auth.startswith("Bearer ") and auth[7:] in proxy.tokens):
                    repo = self.path.split("/v2/", 1)[-1].split("/manifests/")[0].split("/blobs/")[0]
                    challenge = (
                        f'Bearer realm="http://{proxy.host}/token",service="test-registry",'
                        f'scope="repository:{repo}:pull"'
                    )
                    return self._reply(
                        401,
                        b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                        {"WWW-Authenticate": challenge, "Content-Type": "application/json"},
                    )
                if proxy.retry_after_once is not None:
                    delay, proxy.retry_after_once = proxy.retry_after_once, None
                    return self._reply(429, b"slow down", {"Retry-After": f"{delay:g}"})
                self._forward()

            def _token(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                allowed = proxy.anonymous
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    allowed = proxy.users.get(user) == password
                if not allowed or query.get("service") != ["test-registry"]:
                    return self._reply(401, b'{"details":"incorrect username or password"}', {})
                token = secrets.token_hex(16)
                proxy.tokens.add(token)
                self._reply(
                    200, json.dumps({"token": token, "expires_in": 300}).encode(), {"Content-Type": "application/json"}
                )

            def _forward(self) -> None:
                connection = http.client.HTTPConnection(proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"authorization", "host"}}
                connection.request("GET", self.path, headers=headers)
                response = connection.getresponse()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in {"connection", "transfer-encoding"}:
                        self.send_header(key, value)
                if response.getheader("Content-Length") is None:  # unframed body: end it by closing
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                proxy.log.append((self.command, self.path, response.status))
                started, sent = time.monotonic(), 0
                try:
                    while chunk := response.read(16 * 1024):
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        if proxy.rate:
                            ahead = sent / proxy.rate - (time.monotonic() - started)
                            if ahead > 0:
                                time.sleep(ahead)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                finally:
                    connection.close()

        return Handler
