"""The API without Jupyter: ``mr-notebook serve`` (blocking, own loop) and ``%model serve`` (a thread).

``serve`` writes ``{store.home}/run/server.json`` (``url``, ``pid``, ``auth``) while it runs, so kernels and
the CLI find it, and removes it on exit; SIGINT and SIGTERM shut it down cleanly, ending every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from mr_notebook.api.app import make_application
from mr_notebook.api.context import ApiContext, ApiLimits
from mr_notebook.api.origins import parse_origins
from mr_notebook.errors import ServeError
from mr_notebook.hosts import is_loopback
from mr_notebook.service import SyncService
from mr_notebook.settings import DEFAULT_PORT, EngineSettings, runtime_file

if TYPE_CHECKING:
    from mr_notebook.engine import SyncRunner
    from mr_notebook.store import Store

log = logging.getLogger("mr_notebook.api")
#: What one read may buffer (Tornado's default is 100 MiB); bodies stream into the handlers in chunks.
_READ_BUFFER = 1024 * 1024


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def write_runtime_file(home: Path, url: str, auth: bool) -> Path:
    from mr_notebook.store.store import write_json_atomic

    path = runtime_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"url": url, "pid": os.getpid(), "auth": auth})
    return path


def remove_runtime_file(home: Path) -> None:
    """Remove the runtime file if it is ours (a newer server may have replaced it)."""
    path = runtime_file(home)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def _bind(host: str, port: int) -> list[socket.socket]:
    try:
        return bind_sockets(port, host)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ServeError(
                f"Port {port} on {host} is in use (another `mr-notebook serve`?). "
                "Stop it or choose another port with --port."
            ) from None
        raise ServeError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.") from None


def _http_server(context: ApiContext, api_key: str | None, host: str, origins: tuple[str, ...]) -> HTTPServer:
    allowed = () if is_loopback(host) else (host,)
    app = make_application(context, api_key=api_key, allowed_hosts=allowed, allowed_origins=origins)
    # The handlers answer 413 from Content-Length before reading; these caps hold for whatever else arrives.
    limit = context.limits.max_body_size
    return HTTPServer(app, max_body_size=limit, max_buffer_size=max(_READ_BUFFER, 2 * 65536))


def allowed_origins(value: str | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """Origin patterns from the argument, else ``MR_NOTEBOOK_ORIGINS`` (see ``origins.py``)."""
    if value is None:
        value = os.environ.get("MR_NOTEBOOK_ORIGINS")
    return parse_origins(value)


async def _shutdown(server: HTTPServer) -> None:
    server.stop()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.close_all_connections(), 5)


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    store: Store | None = None,
    settings: EngineSettings | None = None,
    limits: ApiLimits | None = None,
    *,
    ready: Callable[[str], None] | None = None,
    origins: str | tuple[str, ...] | None = None,
) -> None:
    """Serve the API until SIGINT/SIGTERM (blocks). ``api_key=None`` reads ``MR_NOTEBOOK_API_KEY``.

    ``ready(url)`` is called once the server listens (the CLI prints the address there). ``origins``: web
    page origins allowed besides the server's own (default ``MR_NOTEBOOK_ORIGINS``).
    """
    if api_key is None:
        api_key = os.environ.get("MR_NOTEBOOK_API_KEY") or None
    if api_key is None and not is_loopback(host):
        raise ServeError(
            f"Refusing to serve on {host} without an API key: anyone who can reach it could use "
            "your models. Pass --api-key KEY (or set MR_NOTEBOOK_API_KEY), or bind 127.0.0.1."
        )
    patterns = allowed_origins(origins)
    asyncio.run(_serve(host, port, api_key, store, settings, limits or ApiLimits(), ready, patterns))


async def _serve(
    host: str,
    port: int,
    api_key: str | None,
    store: Store | None,
    settings: EngineSettings | None,
    limits: ApiLimits,
    ready: Callable[[str], None] | None,
    origins: tuple[str, ...],
) -> None:
    from mr_notebook.engine import Runner
    from mr_notebook.store import Store

    store = store if store is not None else Store()
    context = ApiContext(store, Runner(store, settings), limits, mode="standalone")
    await context.ready_runner()
    sockets = _bind(host, port)
    server = _http_server(context, api_key, host, origins)
    server.add_sockets(sockets)
    url = _url(host, sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    write_runtime_file(store.home, url, api_key is not None)
    try:
        log.info("mr-notebook API listening on %s", url)
        if ready is not None:
            ready(url)
        await stop.wait()
        log.info("Shutting down: ending model workers")
    finally:
        remove_runtime_file(store.home)
        server.stop()
        await context.close()  # in-flight streams end with an error event
        await _shutdown(server)
        for sig in handled:
            loop.remove_signal_handler(sig)


class ServerHandle:
    """A server running on a SyncService's (or SyncRunner's) loop (``%model serve``)."""

    def __init__(self, url: str, port: int, server: HTTPServer, runner: SyncService | SyncRunner) -> None:
        self.url = url
        self.port = port
        self._server = server
        self._runner = runner
        self._stopped = False

    def stop(self) -> None:
        """Stop listening and close connections (the kernel's runner and its models stay)."""
        if not self._stopped:
            self._stopped = True
            self._runner.call(_shutdown(self._server))

    def __repr__(self) -> str:
        return f"ServerHandle(url={self.url!r})"


def start_in_thread(
    sync_runner: SyncService | SyncRunner,
    store: Store,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    limits: ApiLimits | None = None,
    origins: str | tuple[str, ...] | None = None,
) -> ServerHandle:
    """Serve an in-process engine over HTTP from its own loop thread; returns at once.

    Give the engine's SyncService (its rules and Runner are then the server's), or a bare SyncRunner.

    ``origins``: web page origins allowed besides the server's own (default ``MR_NOTEBOOK_ORIGINS``).
    """
    if api_key is None and not is_loopback(host):
        raise ServeError(f"Refusing to serve on {host} without an API key; pass api_key or bind 127.0.0.1.")
    patterns = allowed_origins(origins)
    if isinstance(sync_runner, SyncService):
        service = sync_runner.service
        context = ApiContext.of(service, sync_runner.call(service.ready_runner()), limits, mode="kernel")
    else:
        context = ApiContext(store, sync_runner.runner, limits or ApiLimits(), mode="kernel")

    async def start() -> tuple[HTTPServer, int]:
        sockets = _bind(host, port)
        server = _http_server(context, api_key, host, patterns)
        server.add_sockets(sockets)  # on the runner's loop: this coroutine runs there
        return server, int(sockets[0].getsockname()[1])

    server, bound = sync_runner.call(start())
    return ServerHandle(_url(host, bound), bound, server, sync_runner)
