"""Docker Model Runner's engine routes (``/engines/…``): status, ps, df, load, unload, configure; health, metrics.

Thin: each handler parses its request, makes one ModelService call and writes the typed result's JSON (the
store's routes, ``/models…``, are in :mod:`.model_routes`).
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.base import ApiHandler
from mr_notebook.api.metrics import CONTENT_TYPE_LATEST
from mr_notebook.api.progress import NdjsonWriter, progress_line, relay
from mr_notebook.engine.remote.registry import prometheus_text as remote_metrics
from mr_notebook.errors import InvalidRequest, MrNotebookError
from mr_notebook.service import LoadedModel, Progress, ProgressCallback


class StatusHandler(ApiHandler):
    """``GET /engines/status``: what is serving, and how."""

    route_name = "status"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json((await self.ctx.service.status()).to_json())


class PsHandler(ApiHandler):
    """``GET /engines/ps``: Docker Model Runner's fields plus worker pid, memory, context size, expiry."""

    route_name = "ps"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json([row.to_json() for row in await self.ctx.service.ps()])


class DfHandler(ApiHandler):
    route_name = "df"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json((await self.ctx.service.df()).to_json())


class UnloadHandler(ApiHandler):
    """``POST /engines/unload`` with ``{"models": [...]}`` or ``{"all": true}``."""

    route_name = "unload"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        everything, models = body.get("all", False), body.get("models")
        if not isinstance(everything, bool):
            raise InvalidRequest("all must be true or false.", "all")
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise InvalidRequest("models must be a list of model names.", "models")
        if not everything and not models:
            raise InvalidRequest('Say what to unload: {"models": ["ai/smollm2"]} or {"all": true}.', "models")
        count = await self.ctx.service.unload(None if everything else models)
        self.write_json({"unloaded_runners": count})


class LoadHandler(ApiHandler):
    """``POST /engines/load`` with ``{"model", "keep_alive"?, "stream"?}``: answers once the model is loaded
    (its ``ps`` row); with ``"stream": true``, NDJSON progress lines first (unloading, loading, loaded).

    The load belongs to the engine: a client that goes away does not stop it.
    """

    route_name = "load"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model, keep_alive, streaming = body.get("model"), body.get("keep_alive"), body.get("stream", False)
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest('Name the model to load: {"model": "ai/smollm2"}.', "model")
        if not isinstance(streaming, bool):
            raise InvalidRequest("stream must be true or false.", "stream")
        if not streaming:
            self.write_json((await self.ctx.service.load(model, keep_alive=keep_alive)).to_json())
            return
        await self.run_cancellable(self._stream(model, keep_alive))

    async def _stream(self, model: str, keep_alive: Any) -> None:
        out = NdjsonWriter(self)

        def run(progress: ProgressCallback) -> Any:
            return self.ctx.service.load(model, keep_alive=keep_alive, progress=progress)

        async def write(event: Progress) -> None:
            await out.line(progress_line(event))

        try:
            try:
                row: LoadedModel = await relay(run, write)
            except MrNotebookError as exc:
                if not out.started:
                    raise
                await out.error(exc)
                return
            await out.line({"type": "success", "message": f"Model {row.model} is loaded", "model": row.to_json()})
        except StreamClosedError:
            self.mark_client_gone()


class ConfigureHandler(ApiHandler):
    """``POST /engines/_configure``: persist per-model settings (202); idle workers reload now, busy ones later."""

    route_name = "configure"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model = body.get("model")
        done = await self.ctx.service.configure(
            model if isinstance(model, str) else "",  # the service says what a model name must be
            context_size=body.get("context_size", body.get("context-size")),
            keep_alive=body.get("keep_alive", body.get("keep-alive")),
            threads=body.get("threads"),
            parallel=body.get("parallel"),
        )
        self.write_json({**done.to_json(), "status": "loading" if done.reloaded else "configured"}, 202)


class HealthHandler(ApiHandler):
    route_name = "health"

    @tornado.web.authenticated
    def get(self) -> None:
        self.write_json({"status": "ok"})


class MetricsHandler(ApiHandler):
    route_name = "metrics"

    @tornado.web.authenticated
    async def get(self) -> None:
        runner = await self.ctx.ready_runner()
        text = self.ctx.metrics.render(len(runner.ps()), runner.queue_depth, runner.sequences)
        if runner.remote.engines():
            text += remote_metrics(runner.remote.status())
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        # Flush before finishing: Jupyter's APIHandler.finish() would relabel the body as JSON.
        self.write(text)
        await self.flush()
        self.finish()
