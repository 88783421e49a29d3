"""Blob bodies over the standard library's ``http.client``; httpx does everything else.

Why: on a fast link a pull is CPU-bound, and httpx's receive path is its most expensive part. httpcore
reads 64 KiB per ``recv`` into a new bytes object and h11 parses an event for each, about 370 MB/s on
loopback; ``http.client`` reads straight into our large reusable buffers (``readinto``), about 880 MB/s.
So the blob GET, the one request that moves gigabytes, goes through ``http.client``: the registry client
answers its 401 (token), 429/503 (Retry-After) and errors exactly as on the httpx path, and this module
follows redirects the way httpx does, sending ``Authorization`` only to the origin it was meant for.

Limits, and why they are fine: ``http.client`` speaks neither proxies nor HTTP/2. When a proxy variable
applies (:func:`proxy_configured`), the registry client keeps the httpx path. HTTPS uses the same
certificate settings as httpx (:func:`httpx.create_ssl_context`: certifi, or ``SSL_CERT_FILE`` /
``SSL_CERT_DIR``), built only when an ``https`` URL is met.
"""

from __future__ import annotations

import http.client
import os
import ssl
from collections.abc import Callable, Mapping
from urllib.parse import urljoin, urlsplit

from mr_notebook.store.pull.sink import Read

MAX_REDIRECTS = 10  # httpx's default
_REDIRECTS = {301, 302, 303, 307, 308}
_CHUNKED_READ = 256 * 1024
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy")


class ConnectFailed(Exception):
    """No connection could be opened (refused, unknown host, unreachable network)."""


class TransferFailed(Exception):
    """The connection broke during a request or while its body streamed."""


def proxy_configured() -> bool:
    """Whether httpx would look for a proxy (it reads the process environment, as does this)."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARIABLES)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, parts.port or default


def _connection(url: str, ssl_context: Callable[[], ssl.SSLContext], timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=ssl_context())
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.netloc, timeout=timeout)
    raise TransferFailed(f"cannot follow a redirect to {url}")


def get(
    url: str,
    headers: Mapping[str, str],
    ssl_context: Callable[[], ssl.SSLContext],
    *,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``url``, following redirects; the caller reads the response and closes the connection.

    ``Authorization`` is dropped at the first redirect to another scheme, host or port (as httpx does).
    """
    origin = _origin(url)
    request_headers = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        connection = _connection(url, ssl_context, connect_timeout)
        try:
            connection.connect()
        except OSError as exc:
            connection.close()
            raise ConnectFailed(f"{url}: {exc or type(exc).__name__}") from exc
        try:
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
            target = urlsplit(url)._replace(scheme="", netloc="", fragment="").geturl() or "/"
            connection.request("GET", target, headers=request_headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise TransferFailed(str(exc) or type(exc).__name__) from exc
        location = response.getheader("Location")
        if response.status not in _REDIRECTS or not location:
            return connection, response
        connection.close()
        url = urljoin(url, location)
        if _origin(url) != origin:
            request_headers.pop("Authorization", None)
    raise TransferFailed(f"more than {MAX_REDIRECTS} redirects")


def body_reader(response: http.client.HTTPResponse) -> Read:
    """A ``readinto``-like function for the sink: one ``recv`` per call, straight into its buffer.

    ``HTTPResponse.readinto`` would wait until a whole buffer (4 MiB) arrived: on a slow link the progress,
    the partial file and cancellation would lag. With a known length (what registries send) we read from the
    response's socket file with ``readinto1`` and keep its length up to date ourselves.
    """
    fp = response.fp

    def read_chunked(view: memoryview) -> int:
        try:
            return response.readinto(view[:_CHUNKED_READ])
        except (OSError, http.client.HTTPException) as exc:
            raise TransferFailed(str(exc) or type(exc).__name__) from exc

    def read(view: memoryview) -> int:
        remaining = response.length
        if not remaining:
            return 0
        try:
            count = fp.readinto1(view[:remaining])
        except OSError as exc:
            raise TransferFailed(str(exc) or type(exc).__name__) from exc
        if not count:
            raise TransferFailed(f"the connection closed with {remaining} bytes still to come")
        response.length = remaining - count
        return count

    if response.chunked or response.length is None or fp is None:
        return read_chunked
    return read
