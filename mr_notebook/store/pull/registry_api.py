"""Registry API v2 client: bearer-token challenge, Basic auth, Retry-After, manifests, resumable blob GETs.

httpx makes the small calls (tokens, manifests, configs). Blob bodies go through ``http.client`` into the
sink's reusable buffers (:mod:`.direct` says why), except through a proxy, where httpx streams them too.
Plain-HTTP registries never build a TLS context unless a redirect leads to ``https``: loading the CA bundle
costs more than pulling a small model on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from mr_notebook.errors import AuthenticationRequired, DigestMismatch, PullError, RemoteNotFound
from mr_notebook.store.pull import direct
from mr_notebook.store.pull.common import Reporter, unreachable
from mr_notebook.store.pull.credentials import HUB_HOST, credentials, scheme_for
from mr_notebook.store.pull.sink import HashingWriter

_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_RETRY_AFTER = 60.0
_RETRIES = 5
_MAX_ERROR_BODY = 64 * 1024
_CONNECT_TIMEOUT = 30.0
_READ_TIMEOUT = 120.0
_USER_AGENT = "mr-notebook (docker-model-runner compatible)"
_PARAM = re.compile(r'(\w+)="([^"]*)"')


class _LazyTransport(httpx.BaseTransport):
    """An HTTPS transport built at its first request: a plain-HTTP registry seldom redirects to HTTPS."""

    def __init__(self, ssl_context: Callable[[], ssl.SSLContext]) -> None:
        self._ssl_context = ssl_context
        self._transport: httpx.HTTPTransport | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._transport is None:
            self._transport = httpx.HTTPTransport(verify=self._ssl_context())
        return self._transport.handle_request(request)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RegistryClient:
    """Registry API v2: token challenge, Basic auth, Retry-After, resumable blob GETs."""

    def __init__(self, host: str, repository: str, env: Mapping[str, str], reporter: Reporter) -> None:
        scheme = scheme_for(host, env)
        self.host = host
        self.repository = repository
        self.base = f"{scheme}://{host}"
        self.reporter = reporter
        self.credentials = credentials(host, env)
        self._auth: str | None = None
        self._tls: ssl.SSLContext | None = None
        self.direct = not direct.proxy_configured()  # http.client has no proxy support
        transport: httpx.BaseTransport | None = None
        mounts: dict[str, httpx.BaseTransport] | None = None
        if scheme == "http" and self.direct:
            # Giving httpx a transport only turns its proxy lookup off, and no proxy variable is set. This
            # one never sees an https URL (the mount takes them), so it trusts no certificate at all.
            transport = httpx.HTTPTransport(verify=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
            mounts = {"https://": _LazyTransport(self.ssl_context)}
        self.client = httpx.Client(
            verify=True if transport else self.ssl_context(),
            transport=transport,
            mounts=mounts,
            timeout=httpx.Timeout(_CONNECT_TIMEOUT, read=_READ_TIMEOUT),
            follow_redirects=True,
            headers={"User-Agent": _USER_AGENT},
        )

    def ssl_context(self) -> ssl.SSLContext:
        """httpx's default TLS settings (certifi, or SSL_CERT_FILE/SSL_CERT_DIR), built once, when needed."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return self._tls

    def close(self) -> None:
        self.client.close()

    def _challenge(self, header: str) -> str:
        """Answer a 401's ``WWW-Authenticate``: fetch a bearer token or use Basic credentials.

        Returns the ``Authorization`` value.
        """
        scheme = header.split(" ", 1)[0].lower()
        params = dict(_PARAM.findall(header))
        if scheme == "bearer" and "realm" in params:
            query = {
                "service": params.get("service", self.host),
                "scope": params.get("scope", f"repository:{self.repository}:pull"),
            }
            basic = httpx.BasicAuth(*self.credentials) if self.credentials else None
            try:
                token_response = self.client.get(params["realm"], params=query, auth=basic)
            except httpx.TransportError as exc:
                raise unreachable(params["realm"], exc) from exc
            if token_response.status_code in (401, 403):
                raise self._auth_error("the token server refused the credentials")
            if token_response.status_code >= 400:
                raise PullError(f"The token server {params['realm']} answered {token_response.status_code}.")
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise PullError(f"The token server {params['realm']} returned no token.")
            return f"Bearer {token}"
        if scheme == "basic" and self.credentials:
            raw = f"{self.credentials[0]}:{self.credentials[1]}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        raise self._auth_error("no credentials found")

    def _auth_error(self, why: str) -> AuthenticationRequired:
        hint = " On Docker Hub this also means that the repository does not exist." if self.host == HUB_HOST else ""
        return AuthenticationRequired(
            f"{self.host} requires authentication to pull {self.repository} ({why}).{hint} Set "
            f"MR_NOTEBOOK_REGISTRY_AUTH='{self.host}=USER:PASSWORD' or run `docker login {self.host}`."
        )

    def send(self, path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """A streaming GET of ``/v2/<repository>/<path>``; the caller closes the response."""
        url = f"{self.base}/v2/{self.repository}/{path}"
        tried_auth = False
        attempt = 0
        while True:
            self.reporter.check_cancel()
            request_headers = dict(headers or {})
            if self._auth:
                request_headers["Authorization"] = self._auth
            try:
                response = self.client.send(self.client.build_request("GET", url, headers=request_headers), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise unreachable(self.base, exc) from exc
            except httpx.TransportError as exc:
                raise PullError(f"The connection to {self.host} failed ({exc}); pull again.") from exc
            if response.status_code == 401 and not tried_auth:
                response.read()
                response.close()
                self._auth = self._challenge(response.headers.get("WWW-Authenticate", ""))
                tried_auth = True
                continue
            if response.status_code in (429, 503) and attempt < _RETRIES:
                attempt += 1
                response.close()
                self._wait(response.headers.get("Retry-After"))
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise self._http_error(response.status_code, response.content, url)
            return response

    def _wait(self, retry_after: str | None) -> None:
        """Sleep as long as Retry-After asks (bounded), waking up for cancellation."""
        try:
            delay = float(retry_after or "1")
        except ValueError:
            delay = 5.0  # an HTTP date: not worth parsing for a bounded wait
        deadline = time.monotonic() + min(max(delay, 0.0), _MAX_RETRY_AFTER)
        while time.monotonic() < deadline:
            self.reporter.check_cancel()
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def _http_error(self, status: int, body: bytes, url: str) -> PullError:
        try:
            errors = json.loads(body).get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            detail = body[:200].decode(errors="replace")
        if status == 401:
            return self._auth_error("credentials rejected")
        if status == 403:
            return AuthenticationRequired(f"{self.host} denied access to {self.repository} ({detail}).")
        if status == 404:
            return RemoteNotFound(f"{url} not found ({detail or 'HTTP 404'}).")
        return PullError(f"{self.host} answered HTTP {status} for {url} ({detail}).")

    def get_json(self, path: str, accept: str, digest: str | None) -> tuple[dict[str, Any], str, str]:
        """(document, its digest, its media type) of a manifest or config, verified against ``digest``."""
        # identity: a compressed body would be inflated by httpx in one piece, before any cap could apply.
        response = self.send(path, {"Accept": accept, "Accept-Encoding": "identity"})
        try:
            body = self._read_capped(response, path)
        except httpx.TransportError as exc:
            raise PullError(f"The connection to {self.host} failed ({exc}); pull again.") from exc
        finally:
            response.close()
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = digest or response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and actual != expected:
            raise DigestMismatch(f"{path} from {self.host} does not match its digest {expected} (got {actual}).")
        try:
            document = json.loads(body)
        except ValueError:
            raise PullError(f"{path} from {self.host} is not JSON.") from None
        if not isinstance(document, dict):
            raise PullError(f"{path} from {self.host} is not a JSON object.")
        media_type = str(document.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0])
        return document, actual, media_type

    def _read_capped(self, response: httpx.Response, path: str) -> bytes:
        """The body, refused as soon as it passes the manifest cap (a hostile registry may stream forever)."""
        too_big = PullError(
            f"{path} from {self.host} is larger than a manifest can be ({_MAX_MANIFEST // (1024 * 1024)} MiB); "
            "the registry is misbehaving or the reference does not name a model."
        )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > _MAX_MANIFEST:
            raise too_big
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise PullError(f"{path} from {self.host} came {encoding}-encoded although identity was asked for.")
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > _MAX_MANIFEST:
                raise too_big
        return bytes(body)

    def fetch_to(self, digest: str, writer: HashingWriter, size: int) -> None:
        """Stream the blob into ``writer`` from its current size; resume after dropped connections."""
        failures = 0
        while writer.tell() < size:
            offset = writer.tell()
            try:
                if self.direct:
                    self._receive_direct(digest, writer, offset)
                else:
                    self._receive_httpx(digest, writer, offset)
            except direct.TransferFailed as exc:
                failures = 0 if writer.tell() > offset else failures + 1
                if failures >= _RETRIES:
                    raise PullError(
                        f"The download from {self.host} keeps failing ({exc}); pull again to resume."
                    ) from exc
                continue
            if writer.tell() == offset:
                break  # an empty answer: let the caller report the short download

    def _receive_httpx(self, digest: str, writer: HashingWriter, offset: int) -> None:
        response = self.send(f"blobs/{digest}", {"Range": f"bytes={offset}-"} if offset else None)
        try:
            if offset and response.status_code != 206:
                writer.restart()  # the server ignored Range: take the whole blob again
            for chunk in response.iter_bytes():
                writer.write(chunk)
        except (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
            raise direct.TransferFailed(str(exc)) from exc
        finally:
            response.close()

    def _receive_direct(self, digest: str, writer: HashingWriter, offset: int) -> None:
        connection, response = self._open_direct(f"{self.base}/v2/{self.repository}/blobs/{digest}", offset)
        try:
            if offset and response.status != 206:
                writer.restart()  # the server ignored Range: take the whole blob again
            writer.receive(direct.body_reader(response))
        finally:
            connection.close()

    def _open_direct(self, url: str, offset: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """The blob GET over http.client, answering 401, 429/503 and errors as :meth:`send` does."""
        tried_auth = False
        attempt = 0
        while True:
            self.reporter.check_cancel()
            headers = {"User-Agent": _USER_AGENT}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            if self._auth:
                headers["Authorization"] = self._auth
            try:
                connection, response = direct.get(
                    url, headers, self.ssl_context, connect_timeout=_CONNECT_TIMEOUT, read_timeout=_READ_TIMEOUT
                )
            except direct.ConnectFailed as exc:
                raise unreachable(self.base, exc) from exc
            except direct.TransferFailed as exc:
                raise PullError(f"The connection to {self.host} failed ({exc}); pull again.") from exc
            if response.status in (200, 206):
                return connection, response
            try:
                body = response.read(_MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException):
                body = b""
            finally:
                connection.close()
            if response.status == 401 and not tried_auth:
                self._auth = self._challenge(response.getheader("WWW-Authenticate", ""))
                tried_auth = True
                continue
            if response.status in (429, 503) and attempt < _RETRIES:
                attempt += 1
                self._wait(response.getheader("Retry-After"))
                continue
            raise self._http_error(response.status, body, url)
