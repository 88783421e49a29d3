"""A hostile OCI registry for tests: speaks the distribution API, but its bodies say what the test wants.

Debian's ``docker-registry`` serves only what it stores, correctly; this one answers ``GET /v2/`` and
``GET /v2/<repository>/{manifests,blobs}/<reference>`` with bodies of any length (generated, never held in
memory), a declared ``Content-Length`` that may differ from the manifest's size, or no length at all (the
body ends when the connection closes). It counts what it managed to send for each path, so a test can tell
that a client stopped reading early.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from mr_notebook.testing.servers import LoopbackServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GGUF_TYPE = "application/vnd.docker.ai.gguf.v3"
MODEL_CONFIG_TYPE = "application/vnd.docker.ai.model.config.v0.1+json"
CHUNK = 64 * 1024


def repeat(data: bytes, total: int) -> Callable[[], Iterator[bytes]]:
    """A body of ``total`` bytes: ``data`` first, then zeros, in 64 KiB chunks."""

    def chunks() -> Iterator[bytes]:
        yield data[:total]
        left = total - min(len(data), total)
        zeros = bytes(CHUNK)
        while left > 0:
            yield zeros[: min(CHUNK, left)]
            left -= CHUNK

    return chunks


@dataclass
class Body:
    chunks: Callable[[], Iterable[bytes]]
    length: int | None  # the Content-Length to declare; None: close-delimited
    content_type: str = "application/octet-stream"
    sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class LyingRegistry(LoopbackServer):
    """``with LyingRegistry() as registry:`` serve what :meth:`route` and :meth:`model` set up."""

    def __init__(self) -> None:
        self.routes: dict[str, Body] = {}
        super().__init__(self._handler())

    def route(self, path: str, body: Body) -> Body:
        self.routes[path] = body
        return body

    def model(self, repository: str, tag: str, layer_digest: str, layer_size: int, body: Body) -> Body:
        """A model manifest declaring one GGUF layer (``layer_digest``, ``layer_size``) served as ``body``."""
        config = json.dumps({"config": {"format": "gguf"}, "descriptor": {}}).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": MODEL_CONFIG_TYPE, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": GGUF_TYPE, "digest": layer_digest, "size": layer_size}],
        }
        document = json.dumps(manifest).encode()
        self.route(f"/v2/{repository}/manifests/{tag}", Body(lambda: [document], len(document), OCI_MANIFEST))
        self.route(f"/v2/{repository}/blobs/{config_digest}", Body(lambda: [config], len(config)))
        return self.route(f"/v2/{repository}/blobs/{layer_digest}", body)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/v2/":
                    return self._send(Body(lambda: [b"{}"], 2, "application/json"))
                body = registry.routes.get(path)
                if body is None:
                    data = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
                    return self._send(Body(lambda: [data], len(data), "application/json"), status=404)
                self._send(body)

            def _send(self, body: Body, status: int = 200) -> None:
                self.send_response(status)
                self.send_header("Content-Type", body.content_type)
                if body.length is None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(body.length))
                self.end_headers()
                try:
                    for chunk in body.chunks():
                        self.wfile.write(chunk)
                        body.sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client stopped reading: what we count is what it got
                finally:
                    body.done.set()

        return Handler
