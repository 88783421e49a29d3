"""Docker Model Runner's own routes: the store (/models…), the engines (/engines/…), health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook import __version__
from mr_notebook.api.base import ApiHandler, describe_error
from mr_notebook.api.metrics import CONTENT_TYPE_LATEST
from mr_notebook.engine.remote.registry import prometheus_text as remote_metrics
from mr_notebook.errors import InvalidRequest, ModelInUse, MrNotebookError
from mr_notebook.settings import parse_duration
from mr_notebook.store import parse_ref

if TYPE_CHECKING:
    from mr_notebook.store.pull import PullProgress

log = logging.getLogger("mr_notebook.api")
#: Seconds between two progress lines of one layer (the last line of a layer is always sent).
PROGRESS_INTERVAL = 0.1


def _force(handler: tornado.web.RequestHandler) -> bool:
    return handler.get_argument("force", "false").lower() in ("1", "true", "yes")


class ModelsHandler(ApiHandler):
    """``GET /models``: every stored model in Docker Model Runner's ``list --json`` shape."""

    route_name = "models"

    @tornado.web.authenticated
    async def get(self) -> None:
        records = await asyncio.to_thread(self.ctx.store.list)
        runner = await self.ctx.ready_runner()
        remote = [
            {"id": f"remote:{e.name}/{m}", "tags": [f"{e.name}/{m}"], "created": 0, "config": {"engine": e.name}}
            for e, m in await runner.remote.models()
        ]
        self.write_json([r.to_json() for r in records] + remote)


class ModelHandler(ApiHandler):
    """``GET /models/{ref}`` (inspect) and ``DELETE /models/{ref}[?force=true]`` (rm)."""

    route_name = "model"

    @tornado.web.authenticated
    async def get(self, ref: str) -> None:
        remote = (await self.ctx.ready_runner()).remote.describe(ref)
        if remote is not None:  # a remote engine's model (issue 15)
            self.write_json(remote)
            return
        record = await asyncio.to_thread(self.ctx.store.get, ref)
        self.write_json(record.to_json())

    @tornado.web.authenticated
    async def delete(self, ref: str) -> None:
        store, force = self.ctx.store, _force(self)
        runner = await self.ctx.ready_runner()
        runner.remote.refuse([ref], "rm")
        record = await asyncio.to_thread(store.get, ref)
        loaded = [s.model for s in runner.ps() if s.id == record.id]
        last_name = len(record.tags) <= 1 or ref.removeprefix("sha256:") in record.id
        if loaded and last_name:
            if not force:
                raise ModelInUse(
                    f"Model {ref} is loaded ({', '.join(loaded)}); unload it first "
                    "(POST /engines/unload) or remove it with ?force=true."
                )
            await runner.unload(loaded)
        done = await asyncio.to_thread(store.remove, [ref], force=force)
        self.write_json(done.to_json())


class PurgeHandler(ApiHandler):
    """``DELETE /models/purge``: unload everything, then delete every model and blob."""

    route_name = "purge"

    @tornado.web.authenticated
    async def delete(self) -> None:
        runner = await self.ctx.ready_runner()
        await runner.unload(None)
        self.write_json(await asyncio.to_thread(self.ctx.store.purge))


class TagHandler(ApiHandler):
    """``POST /models/{ref}/tag`` with ``{"target": "ns/name:tag"}`` (or Docker's ``?repo=…&tag=…``)."""

    route_name = "tag"

    @tornado.web.authenticated
    async def post(self, ref: str) -> None:
        target: Any = None
        if self.request.body.strip():
            target = self.json_body().get("target")
        if target is None and self.get_argument("repo", None):
            repo, tag = self.get_argument("repo"), self.get_argument("tag", "latest")
            target = f"{repo}:{tag}"
        if not isinstance(target, str) or not target:
            raise InvalidRequest('Give the new name as {"target": "namespace/name:tag"}.', "target")
        record = await asyncio.to_thread(self.ctx.store.tag, ref, target)
        self.write_json({"message": f"Model {ref} tagged as {parse_ref(target)}", "model": record.to_json()}, 201)


def _progress_line(event: PullProgress) -> dict[str, Any]:
    return {
        "type": "progress",
        "status": event.status,
        "message": event.message,
        "total": event.overall_total,
        "pulled": event.overall_completed,
        "layer": {"id": event.digest, "size": event.total, "current": event.completed},
    }


class CreateHandler(ApiHandler):
    """``POST /models/create`` with ``{"from": REF}``: pull, streaming NDJSON progress lines.

    Nothing is sent before the first progress event, so a pull that fails at once (unknown repository,
    registry unreachable) still gets a proper HTTP status; later failures arrive as a ``type: error`` line.
    """

    route_name = "create"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        source = body.get("from")
        if not isinstance(source, str) or not source.strip():
            raise InvalidRequest('Give the model to pull as {"from": "ai/smollm2"}.', "from")
        parse_ref(source)  # a bad reference is a 400 before anything starts
        await self.run_cancellable(self._pull(source))

    async def _pull(self, source: str) -> None:
        from mr_notebook.store.pull import pull

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[PullProgress] = asyncio.Queue()
        cancel = threading.Event()

        def progress(event: PullProgress) -> None:  # called on the pull's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        job = loop.run_in_executor(None, lambda: pull(self.ctx.store, source, progress=progress, cancel=cancel))
        sent: dict[str | None, float] = {}
        held: list[PullProgress] = []
        try:
            while not job.done() or not events.empty():
                getter = asyncio.ensure_future(events.get())
                waiting: set[asyncio.Future[Any]] = {getter, job}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                event = getter.result()
                now = time.monotonic()
                layer_done = event.total and event.completed >= event.total
                if (
                    event.status == "downloading"
                    and not layer_done
                    and now - sent.get(event.digest, 0) < PROGRESS_INTERVAL
                ):
                    continue
                sent[event.digest] = now
                if event.status == "resolving" and not self._headers_written:
                    held.append(event)  # a pull that fails while resolving still gets a real HTTP status
                    continue
                for line in [*held, event]:
                    await self._line(_progress_line(line))
                held.clear()
            try:
                result = job.result()
            except MrNotebookError as exc:
                if not self._headers_written:
                    raise
                _, err = describe_error(exc, 500, "POST", self.request.path)
                await self._line({"type": "error", "message": str(exc), "error": err["error"]})
                return
            for line in held:
                await self._line(_progress_line(line))
            await self._line(
                {
                    "type": "success",
                    "message": f"Model {result.record.name} is up to date"
                    if result.already_present
                    else f"Model pulled successfully: {result.record.name}",
                    "downloaded": result.downloaded,
                    "already_present": result.already_present,
                    "model": result.record.to_json(),
                }
            )
        except StreamClosedError:
            self.mark_client_gone()
        finally:
            cancel.set()  # no-op once the pull is done; a vanished client stops it (partial kept for resume)
            if not job.done():
                await asyncio.wait({job})

    async def _line(self, data: dict[str, Any]) -> None:
        if not self._headers_written:
            self.start_stream("application/x-ndjson")
        self.write(json.dumps(data) + "\n")
        await self.flush()


def _iso(timestamp: float | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


class StatusHandler(ApiHandler):
    """``GET /engines/status`` (and the API root): what is serving, and how."""

    route_name = "status"

    @tornado.web.authenticated
    async def get(self) -> None:
        runner = await self.ctx.ready_runner()
        self.write_json(
            {
                "status": "running",
                "message": "mr-notebook model runner is running",
                "backend": "llama.cpp",
                "mode": self.ctx.mode,
                "version": __version__,
                "loaded_models": len(runner.ps()),
                "max_queue": runner.settings.max_queue,
                # Kernels on the same machine use it for the verbs the API has no route for (package, prune).
                "store": str(self.ctx.store.home),
                # Remote engines (issue 15): health, latency of the last answer, requests in flight.
                "engines": runner.remote.status(),
            }
        )


class PsHandler(ApiHandler):
    """``GET /engines/ps``: Docker Model Runner's fields plus worker pid, memory, context size, expiry."""

    route_name = "ps"

    @tornado.web.authenticated
    async def get(self) -> None:
        runner = await self.ctx.ready_runner()
        rows = []
        for status in runner.ps():
            row = status.to_json()
            row.update(
                {
                    "model_name": status.model,
                    "backend_name": "llama.cpp",
                    "mode": "completion",
                    "last_used": _iso(status.last_used),
                    "loaded_at": _iso(status.loaded_at),
                    "expires_at": _iso(status.expires_at),
                    "in_use": status.in_flight > 0,
                }
            )
            rows.append(row)
        rows += [_engine_row(engine) for engine in runner.remote.status() if engine["requests"]]
        self.write_json(rows)


def _engine_row(engine: dict[str, Any]) -> dict[str, Any]:
    """A remote engine as a ``ps`` row: its name (a valid model reference, as ps readers parse them), health and
    latency; no pid, memory or expiry here."""
    name = engine["name"]
    return {
        "model": name,
        "model_name": name,
        "id": f"remote:{name}",
        "backend_name": "remote",
        "pid": 0,
        "memory": 0,
        "context_size": 0,
        "keep_alive": -1,
        "expires_at": None,
        "in_flight": engine["in_flight"],
        "queued": engine["waiting"],
        "in_use": engine["in_flight"] > 0,
        "engine": engine,
    }


class DfHandler(ApiHandler):
    route_name = "df"

    @tornado.web.authenticated
    async def get(self) -> None:
        usage = await asyncio.to_thread(self.ctx.store.df)
        self.write_json({"models_disk_usage": usage["total"], "default_backend_disk_usage": 0, **usage})


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
        runner = await self.ctx.ready_runner()
        count = await runner.unload(None if everything else models)
        self.write_json({"unloaded_runners": count})


class ConfigureHandler(ApiHandler):
    """``POST /engines/_configure``: persist per-model settings (202), then preload the model."""

    route_name = "configure"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required.", "model")
        self.ctx.runner.remote.refuse([model], "configure")
        settings: dict[str, Any] = {}
        context_size = body.get("context_size", body.get("context-size"))
        if context_size is not None:
            if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 1:
                raise InvalidRequest("context_size must be a positive integer.", "context_size")
            settings["context_size"] = context_size
        keep_alive = body.get("keep_alive", body.get("keep-alive"))
        if keep_alive is not None:
            if not isinstance(keep_alive, str | int | float) or isinstance(keep_alive, bool):
                raise InvalidRequest("keep_alive must be a duration like '5m', seconds, or -1.", "keep_alive")
            settings["keep_alive"] = parse_duration(keep_alive)
        for key in ("threads", "parallel"):  # CPU threads and parallel sequences of the model's worker
            value = body.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                    raise InvalidRequest(f"{key} must be an integer from 1 to 1024.", key)
                settings[key] = value
        record = await asyncio.to_thread(self.ctx.store.configure, model, **settings)
        runner = await self.ctx.ready_runner()
        reload_now = [s.model for s in runner.ps() if s.id == record.id and s.in_flight == 0 and s.queued == 0]
        self.ctx.in_background(self._preload(model, reload_now))
        self.write_json({"model": model, "settings": record.settings, "status": "loading"}, 202)

    async def _preload(self, model: str, idle_loaded: list[str]) -> None:
        runner = self.ctx.runner
        try:
            if idle_loaded:  # settings apply at load: reload an idle worker now, a busy one at its next load
                await runner.unload(idle_loaded)
            await runner.load(model)
        except MrNotebookError as exc:
            log.warning("Preloading %s after _configure failed: %s", model, exc)


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
