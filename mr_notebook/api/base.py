"""What every handler shares: OpenAI-shaped errors, JSON in and out, SSE, body limits, disconnects.

Handlers subclass :class:`ApiHandler` (itself a plain ``tornado.web.RequestHandler``). The host picks the
authentication by the base class it mixes in when the route table is built (``app.make_app_handlers``):
jupyter_server's ``APIHandler`` under Jupyter, :class:`StandaloneAuth` for ``mr-notebook serve``. Every
verb carries ``@tornado.web.authenticated``, which both bases satisfy by setting ``current_user``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Coroutine, Mapping
from http.client import responses
from typing import Any, ClassVar

import tornado.web

from mr_notebook.api.context import SETTINGS_KEY, ApiContext
from mr_notebook.api.jsonbody import parse_json, require_json_content_type
from mr_notebook.api.origins import BrowserCheck, check_browser_request, cors_headers
from mr_notebook.errors import InvalidJSON, MrNotebookError
from mr_notebook.hosts import is_loopback

log = logging.getLogger("mr_notebook.api")

#: Application setting holding the standalone server's API key (None: no key, loopback only).
API_KEY_SETTING = "mr_notebook_api_key"
#: Application setting: extra Host header names a keyless standalone server accepts.
ALLOWED_HOSTS_SETTING = "mr_notebook_allowed_hosts"
#: Application setting: Origin patterns (besides this server's own loopback origins) a standalone server accepts.
ALLOWED_ORIGINS_SETTING = "mr_notebook_allowed_origins"

_STATUS_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def error_body(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def describe_error(exc: BaseException | None, status: int, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OpenAI error body) for any exception a handler let through."""
    if isinstance(exc, MrNotebookError):
        return exc.http_status, error_body(str(exc), exc.error_type, exc.code, exc.param)
    if isinstance(exc, tornado.web.HTTPError):
        status = exc.status_code
        # Tornado doubles the % of a message given without arguments, so always format.
        message = exc.log_message % exc.args if exc.log_message else None
    else:
        message = None
    if not message:
        message = {
            401: "Missing or wrong API key: send it as `Authorization: Bearer <key>`.",
            403: "Not authenticated: send the server's token as `Authorization: Bearer <token>`.",
            404: f"Unknown route {method} {path}. The OpenAI API is under /v1 (e.g. /v1/chat/completions).",
            405: f"Method {method} is not allowed on {path}.",
            413: "The request body is too large.",
            415: "Send the body as JSON with the header `Content-Type: application/json`.",
        }.get(status)
    if not message:
        message = "Internal server error (see the server log)." if status >= 500 else responses.get(status, "Error")
    error_type = "server_error" if status >= 500 else "invalid_request_error"
    return status, error_body(message, error_type, _STATUS_CODES.get(status, "server_error" if status >= 500 else None))


@tornado.web.stream_request_body
class ApiHandler(tornado.web.RequestHandler):
    """Base of every mr_notebook handler, whichever host serves it.

    Bodies are streamed in (``stream_request_body``) so the limit applies before anything is buffered:
    ``prepare`` (after the host's authentication) refuses a too-large ``Content-Length`` at once and caps
    what the connection will read; ``data_received`` collects the rest into ``request.body``.
    """

    #: Label of this route in the request metrics (never the raw path: names would explode the series).
    route_name: ClassVar[str] = "other"

    _work: asyncio.Future[None] | None = None
    _client_gone: bool = False
    _received: bytearray | None = None
    started_at: float = 0.0

    @property
    def ctx(self) -> ApiContext:
        context = self.settings.get(SETTINGS_KEY)
        if not isinstance(context, ApiContext):
            raise RuntimeError("The mr_notebook API context is missing from the application settings.")
        return context

    async def prepare(self) -> None:  # type: ignore[override]
        self.started_at = time.perf_counter()
        result = super().prepare()  # the host's authentication
        if result is not None:
            await result
        if self._finished:
            return
        # Also refuse methods a route does not implement (Jupyter would answer 405 before @authenticated
        # runs); OPTIONS stays open for CORS preflight, as jupyter_server intends.
        if self.request.method != "OPTIONS" and not self.current_user:
            raise tornado.web.HTTPError(403)
        limit = self.body_limit()
        declared = self.request.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise tornado.web.HTTPError(413, "The request body has %d bytes; the limit is %d.", int(declared), limit)
        # A chunked body past the limit ends the connection (Tornado stops reading; nothing more is buffered).
        self.request.connection.set_max_body_size(limit)  # type: ignore[union-attr]
        self._received = bytearray()
        self.request.body = self._received  # type: ignore[assignment]  # grows as chunks arrive

    def body_limit(self) -> int:
        """Bytes this request's body may have (a route taking file uploads allows more)."""
        return self.ctx.limits.max_body_size

    def data_received(self, chunk: bytes) -> None:
        if self._received is not None:
            self._received += chunk

    # ------------------------------------------------------------------ input

    def json_body(self) -> dict[str, Any]:
        """The body as a JSON object, or InvalidJSON (400)."""
        raw = self.request.body
        if not raw.strip():
            raise InvalidJSON("The request body is empty; send a JSON object.")
        require_json_content_type(self.request.headers.get("Content-Type", ""))
        data = parse_json(raw)
        if not isinstance(data, dict):
            raise InvalidJSON(f"The request body must be a JSON object, not {type(data).__name__}.")
        return data

    # ------------------------------------------------------------------ output

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def start_stream(self, content_type: str) -> None:
        self.set_header("Content-Type", content_type)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # proxies must not hold the deltas back

    async def send_event(self, data: str) -> None:
        """One SSE event, flushed (raises StreamClosedError when the client is gone)."""
        self.write(f"data: {data}\n\n")
        await self.flush()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        status, body = describe_error(exc, status_code, self.request.method or "", self.request.path)
        if status != status_code:
            self.set_status(status)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            self.set_header("Retry-After", str(retry_after))
        if status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="mr-notebook"')
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # User errors are answers, not server faults: one line, no traceback.
        if isinstance(value, MrNotebookError):
            log.info("%s %s -> %s: %s", self.request.method, self.request.path, value.http_status, value)
        else:
            super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        context = self.settings.get(SETTINGS_KEY)
        if isinstance(context, ApiContext):
            context.metrics.request(self.route_name, self.request.method or "", self.get_status())
        super().on_finish()

    # ------------------------------------------------------------------ disconnects

    def on_connection_close(self) -> None:
        # The client went away: cancelling the work closes the engine stream, which stops generation.
        self._client_gone = True
        if self._work is not None and not self._work.done():
            self._work.cancel()
        super().on_connection_close()

    async def run_cancellable(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` so that a client disconnect cancels it."""
        self._work = asyncio.ensure_future(work)
        try:
            await self._work
        except asyncio.CancelledError:
            if not self._client_gone:
                raise
            log.info("%s %s: client disconnected, generation cancelled", self.request.method, self.request.path)
        finally:
            self._work = None

    @property
    def client_gone(self) -> bool:
        return self._client_gone

    def mark_client_gone(self) -> None:
        self._client_gone = True


class StandaloneAuth(tornado.web.RequestHandler):
    """Host base for `mr-notebook serve`: browser origins checked; no auth on loopback without a key, else
    `Bearer KEY`. Jupyter's own base (APIHandler) does the same jobs with its token, XSRF and origin checks."""

    def _browser_check(self) -> BrowserCheck:
        patterns = self.settings.get(ALLOWED_ORIGINS_SETTING, ())
        return check_browser_request(self.request.headers, self.request.host, patterns)

    def set_default_headers(self) -> None:
        # Here rather than in prepare: error answers reset the headers to these defaults, and a page that is
        # allowed must be able to read its errors too.
        super().set_default_headers()
        for name, value in cors_headers(self._browser_check(), self.request.headers, preflight=False).items():
            self.set_header(name, value)

    def prepare(self) -> None:
        key = self.settings.get(API_KEY_SETTING)
        if key is None:
            # Without a key only loopback names are accepted, so a web page cannot reach the server
            # through DNS rebinding (the browser sends the attacker's host name).
            name = self.request.host_name
            allowed = set(self.settings.get(ALLOWED_HOSTS_SETTING, ()))
            if name and not is_loopback(name) and name not in allowed:  # no Host at all: HTTP/1.0, not a browser
                raise tornado.web.HTTPError(
                    403,
                    "Host %r is not allowed; start the server with an API key to serve other hosts.",
                    self.request.host_name,
                )
        refusal = self._browser_check().refusal
        if refusal is not None:
            raise tornado.web.HTTPError(403, "%s", refusal)
        if self.request.method == "OPTIONS":
            return  # a CORS preflight carries no credentials; options() answers it
        if key is None:
            self.current_user = "local"
            return
        token = bearer_token(self.request.headers)
        if token is None or not hmac.compare_digest(token.encode(), str(key).encode()):
            raise tornado.web.HTTPError(
                401,
                "Missing or wrong API key: send it as `Authorization: Bearer <key>`."
                if token is None
                else "Wrong API key.",
            )
        self.current_user = "api-key"

    def options(self, *args: Any, **kwargs: Any) -> None:
        """CORS preflight: allowed origins get the methods and headers they ask for; the others got 403."""
        for name, value in cors_headers(self._browser_check(), self.request.headers, preflight=True).items():
            self.set_header(name, value)
        self.set_status(204)
        self.finish()


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The credential of an ``Authorization: Bearer X`` (or ``token X``) header."""
    scheme, _, value = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    return None


class NotFoundHandler(ApiHandler):
    """Everything under the API root that no route matches: a JSON 404, never an HTML page."""

    route_name = "not_found"

    def _missing(self, *args: Any, **kwargs: Any) -> None:
        raise tornado.web.HTTPError(404)

    @tornado.web.authenticated
    def get(self, *args: Any, **kwargs: Any) -> None:
        self._missing()

    @tornado.web.authenticated
    def post(self, *args: Any, **kwargs: Any) -> None:
        self._missing()

    @tornado.web.authenticated
    def put(self, *args: Any, **kwargs: Any) -> None:
        self._missing()

    @tornado.web.authenticated
    def patch(self, *args: Any, **kwargs: Any) -> None:
        self._missing()

    @tornado.web.authenticated
    def delete(self, *args: Any, **kwargs: Any) -> None:
        self._missing()
