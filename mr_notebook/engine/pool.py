"""The worker pool under the Runner: loading on demand, keep-alive timers, the memory budget, eviction.

One worker process per loaded model (:class:`~mr_notebook.engine.handle.WorkerHandle`). A load belongs to the
pool (a requester that goes away does not cancel it); ``close`` ends every worker, loads in progress included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from mr_notebook.engine import memory
from mr_notebook.engine.handle import WorkerHandle
from mr_notebook.engine.results import ModelStatus
from mr_notebook.errors import (
    EngineUnavailable,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    MrNotebookError,
    QueueFull,
)
from mr_notebook.settings import EngineSettings, parse_duration
from mr_notebook.store import CHAT_TEMPLATE_MEDIA_TYPE, ModelRecord, Store, format_bytes, parse_ref
from mr_notebook.store.pull.common import PullProgress

log = logging.getLogger(__name__)

#: Sequences a model's worker runs at once (llama-server's -np, Ollama's OLLAMA_NUM_PARALLEL default is 4 too).
DEFAULT_PARALLEL = 4


def shown_name(model: str, record: ModelRecord) -> str:
    """The name ``ps`` shows for a loaded model, whatever spelling loaded it: the normalized reference
    (``ai/tiny`` → ``ai/tiny:latest``, as ``list`` shows it), or the model's first name when asked by id."""
    try:
        name = str(parse_ref(model))
    except ValueError:
        return record.name
    return name if name in record.tags else record.name


class WorkerPool:
    """Loaded models (one worker process each), keep-alive timers and the memory budget.

    Store reads here run in a thread (``asyncio.to_thread``): under Jupyter this runs on the server's IOLoop,
    and a split model's load takes the store's index lock, which another process may hold for seconds.
    """

    def __init__(self, store: Store, settings: EngineSettings | None = None) -> None:
        self.store = store
        self.settings = settings if settings is not None else EngineSettings.from_env()
        self._handles: dict[str, WorkerHandle] = {}
        self._load_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._loading: dict[str, asyncio.Future[WorkerHandle]] = {}
        #: Progress callbacks of the callers of ``load``, by model id (a load may be joined by several).
        self._listeners: dict[str, list[Callable[[PullProgress], None]]] = {}
        self._closed = False
        self._loading_names: dict[str, str] = {}

    async def start(self) -> None:
        """Bind to the running loop (idempotent; every operation calls it)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._load_lock = asyncio.Lock()

    async def close(self) -> None:
        """End every worker process (loads in progress included); no load starts afterwards."""
        self._closed = True
        for loading in list(self._loading.values()):
            loading.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await asyncio.gather(*(self._shutdown(h) for h in list(self._handles.values())))
        for task in list(self._background):
            await task

    async def unload(self, models: list[str] | None = None) -> int:
        """End the workers of ``models`` (None: all); returns how many were running."""
        await self.start()
        if models is None:
            chosen = [h for h in self._handles.values() if h.alive]
        else:
            ids = set(await asyncio.to_thread(self._ids, models))
            chosen = [h for h in self._handles.values() if h.alive and (h.id in ids or h.name in ids)]
        await asyncio.gather(*(self._shutdown(h) for h in chosen))
        return len(chosen)

    def _ids(self, names: list[str]) -> list[str]:
        ids = []
        for name in names:
            try:
                ids.append(self.store.get(name).id)
            except (ModelNotFound, ValueError):
                ids.append(name)  # removed from the store since it was loaded: match by the name asked
        return ids

    async def reconfigure(self, model_id: str) -> tuple[list[str], list[str]]:
        """New settings of a stored model reach its workers: idle ones are reloaded now, busy ones once their
        requests have finished (new requests meanwhile still go to them). Returns (reloaded, pending) names."""
        await self.start()
        reloaded: list[str] = []
        pending: list[str] = []
        for handle in [h for h in self._handles.values() if h.alive and h.id == model_id]:
            if handle.active == 0:
                reloaded.append(handle.name)
                await self._shutdown(handle)
                self._in_background(self._reload(handle.name))
            else:
                pending.append(handle.name)
                handle.reload_when_idle = True
        return reloaded, pending

    async def _reload(self, name: str) -> None:
        try:
            await self.load_local(name)
        except MrNotebookError as exc:  # nobody waits for this load: say it in the log, the next request retries
            log.warning("Reloading %s with its new settings failed: %s", name, exc)

    async def load_local(
        self,
        model: str,
        *,
        keep_alive: float | None = None,
        context_size: int | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> ModelStatus:
        """Load a stored model now (its keep_alive timer starts at once); ``progress`` hears what happens."""
        record = await self._record(model)
        if progress is not None:
            self._listeners.setdefault(record.id, []).append(progress)
        try:
            handle = await self._acquire(model, keep_alive, queued=False, context_size=context_size, record=record)
        finally:
            if progress is not None:
                self._listeners[record.id].remove(progress)
                if not self._listeners[record.id]:
                    del self._listeners[record.id]
        self._release(handle)
        status = self._status(handle)
        if progress is not None:
            progress(PullProgress("loaded", f"Model {handle.name} is loaded (worker {handle.pid}).", handle.id))
        return status

    def _tell(self, model_id: str, status: str, message: str) -> None:
        for listener in list(self._listeners.get(model_id, ())):
            listener(PullProgress(status, message, model_id))

    async def _record(self, model: str) -> ModelRecord:
        await self.start()
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model must be a model name such as ai/smollm2.", "model")
        return await asyncio.to_thread(self.store.get, model)

    def _loaded_now(self, model_id: str) -> None:
        self._loading.pop(model_id, None)
        self._loading_names.pop(model_id, None)

    def loading(self) -> dict[str, str]:
        """Models whose worker is starting now: model id → name (not in ``ps`` until loaded)."""
        return {model_id: name for model_id, name in self._loading_names.items() if model_id in self._loading}

    def ps(self) -> list[ModelStatus]:
        """Loaded models, most recently used first."""
        alive = [h for h in self._handles.values() if h.alive]
        return [self._status(h) for h in sorted(alive, key=lambda h: -h.last_used)]

    def queue_depth(self) -> dict[str, int]:
        return {h.name: h.queued for h in self._handles.values() if h.alive}

    def sequences(self) -> dict[str, dict[str, float]]:
        """Per loaded model: sequences decoding, requests waiting for a slot, recent batch fill (0 to 1)."""
        return {
            h.name: {
                "active": float(len(h.running)),
                "queued": float(h.queued),
                "batch_fill": float(h.stats.get("batch_fill", 0.0)) if h.running else 0.0,
            }
            for h in self._handles.values()
            if h.alive
        }

    # ------------------------------------------------------------------ loading and lifecycle

    def _status(self, handle: WorkerHandle) -> ModelStatus:
        return ModelStatus(
            model=handle.name,
            id=handle.id,
            pid=handle.pid,
            memory=memory.rss(handle.pid),
            context_size=handle.n_ctx,
            keep_alive=handle.keep_alive,
            expires_at=handle.expires_at if handle.active == 0 else None,
            loaded_at=handle.loaded_at,
            last_used=handle.last_used,
            in_flight=len(handle.running),
            queued=handle.queued,
            threads=handle.threads,
            parallel=handle.parallel,
            batch_fill=float(handle.stats.get("batch_fill", 0.0)) if handle.running else 0.0,
        )

    def _keep_alive(self, record: ModelRecord, requested: float | None) -> float:
        configured = record.settings.get("keep_alive")
        if configured is not None:
            return parse_duration(configured)
        return self.settings.keep_alive if requested is None else requested

    async def _acquire(
        self,
        model: str,
        keep_alive: float | None,
        *,
        queued: bool,
        context_size: int | None = None,
        record: ModelRecord | None = None,
    ) -> WorkerHandle:
        """The model's running worker (loading it if needed), with this request counted on it."""
        if record is None:
            record = await self._record(model)
        handle = self._handles.get(record.id)
        if handle is not None and handle.alive and context_size and handle.config.get("n_ctx") != context_size:
            await self._retire(handle)
        if handle is None or not handle.alive:
            handle = await self._load(shown_name(model, record), record, context_size)
        if queued and handle.queued >= self.settings.max_queue:
            raise QueueFull(
                f"{handle.queued} requests are already waiting for model {handle.name} "
                f"(limit {self.settings.max_queue}); retry in a moment."
            )
        # No await between the load and this count, so the model cannot be evicted in between.
        handle.active += 1
        handle.keep_alive = self._keep_alive(record, keep_alive)
        handle.expires_at = None
        if handle.timer is not None:
            handle.timer.cancel()
            handle.timer = None
        return handle

    async def _retire(self, handle: WorkerHandle) -> None:
        """End a worker once its requests have finished (a reload must not cut other clients' answers)."""
        deadline = time.monotonic() + self.settings.load_timeout
        while handle.active > 0 and handle.alive:
            if time.monotonic() > deadline:
                raise QueueFull(
                    f"Model {handle.name} is still busy, so it cannot be reloaded with another context size yet; "
                    "retry in a moment, or send the request without a context size."
                )
            await asyncio.sleep(0.05)
        await self._shutdown(handle)

    def _release(self, handle: WorkerHandle) -> None:
        handle.active -= 1
        handle.last_used = time.time()
        if handle.active == 0 and handle.reload_when_idle and handle.alive:
            handle.reload_when_idle = False  # settings changed while it was busy: they apply now
            self._in_background(self._shutdown_and_reload(handle))
            return
        self._arm(handle)

    async def _shutdown_and_reload(self, handle: WorkerHandle) -> None:
        await self._shutdown(handle)
        await self._reload(handle.name)

    def _arm(self, handle: WorkerHandle, grace: float = 0.0) -> None:
        """Start an idle model's keep-alive timer (keep_alive 0: end it after ``grace`` seconds)."""
        if handle.active > 0 or not handle.alive or self._loop is None or handle.timer is not None:
            return
        if handle.keep_alive == 0 and grace == 0:
            self._in_background(self._shutdown(handle))
        elif handle.keep_alive == 0:
            handle.timer = self._loop.call_later(grace, self._expire, handle)
        elif handle.keep_alive > 0:
            handle.expires_at = handle.last_used + handle.keep_alive
            handle.timer = self._loop.call_later(handle.keep_alive, self._expire, handle)

    def _expire(self, handle: WorkerHandle) -> None:
        handle.timer = None
        if handle.active == 0 and handle.alive:
            self._in_background(self._shutdown(handle))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self, handle: WorkerHandle) -> None:
        await handle.close()
        self._forget(handle)

    def _forget(self, handle: WorkerHandle) -> None:
        if self._handles.get(handle.id) is handle:
            del self._handles[handle.id]

    def _config(self, name: str, record: ModelRecord, n_ctx: int) -> dict[str, Any]:
        template = record.settings.get("chat_template")
        template_files = self.store.paths(record, CHAT_TEMPLATE_MEDIA_TYPE)
        if not template and template_files:
            template = template_files[0].read_text(encoding="utf-8")
        return {
            "name": name,
            # Part 1 of a split model sits beside the other parts under llama.cpp's names: it loads them all.
            "path": str(self.store.model_file(record)),
            "n_ctx": n_ctx,
            "chat_template": template or None,
            "gpu_layers": record.settings.get("gpu_layers"),
            "threads": int(record.settings.get("threads") or self.settings.threads or 0) or memory.default_threads(),
            "parallel": self._parallel(record),
            "pooling": record.hints.get("pooling"),
            "context_length": record.hints.get("context_length"),
        }

    def _parallel(self, record: ModelRecord) -> int:
        return int(record.settings.get("parallel") or self.settings.parallel or DEFAULT_PARALLEL)

    async def _load(self, name: str, record: ModelRecord, context_size: int | None = None) -> WorkerHandle:
        """Load a model once for every request that wants it; a requester that goes away does not stop it.

        A client timing out during a long load would otherwise cancel it, and the next attempt start over.
        The load belongs to the Runner (``close`` cancels it, which ends its process).
        """
        if self._closed:  # a request that was on its way while the host shut down: start no worker nobody ends
            raise EngineUnavailable(f"The model engine is shutting down, so {name} was not loaded; retry once it runs.")
        loading = self._loading.get(record.id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_now(name, record, context_size))
            self._loading[record.id] = loading
            self._loading_names[record.id] = name
            loading.add_done_callback(lambda _: self._loaded_now(record.id))
        return await asyncio.shield(loading)

    async def _load_now(self, name: str, record: ModelRecord, context_size: int | None = None) -> WorkerHandle:
        if self._load_lock is None:
            raise RuntimeError("Runner.start() was not awaited")
        async with self._load_lock:  # one load decision at a time keeps the memory accounting honest
            handle = self._handles.get(record.id)
            if handle is not None and handle.alive:
                return handle
            n_ctx = context_size or memory.context_size(record.settings, record.hints)
            need = memory.estimate(record.hints, n_ctx, self._parallel(record))
            await self._make_room(name, need, record.id)
            # A template file to read, a split model's links to publish under the index lock, adopted files to
            # re-check: all off the loop.
            config = await asyncio.to_thread(self._config, name, record, n_ctx)
            self._tell(record.id, "loading", f"Loading {name} (context {n_ctx}, about {need.describe()})")
            handle = WorkerHandle(
                name,
                record.id,
                config,
                need,
                self.settings.keep_alive,
                self._forget,
                dict(self.settings.extra_env),
            )
            await handle.start(self.settings.load_timeout)
            self._handles[record.id] = handle
            log.info("loaded %s in worker %s (context %s)", name, handle.pid, handle.n_ctx)
            # Its keep-alive runs until a request takes it (the one that asked may have gone away meanwhile).
            self._arm(handle, grace=1.0)
            return handle

    async def _make_room(self, name: str, need: memory.Estimate, model_id: str = "") -> None:
        """Evict idle models, least recently used first, until ``need`` fits; else InsufficientMemory."""
        while True:
            live = [h for h in self._handles.values() if h.alive]
            room = memory.available(self.settings, sum(h.estimate.total for h in live))
            too_many = len(live) >= self.settings.max_models
            if not too_many and need.total <= room:
                return
            idle = sorted((h for h in live if h.active == 0), key=lambda h: h.last_used)
            if idle:
                log.info("unloading idle model %s to make room for %s", idle[0].name, name)
                self._tell(model_id, "unloading", f"Unloading idle model {idle[0].name} to make room for {name}")
                await self._shutdown(idle[0])
                continue
            busy = f" ({len(live)} loaded model(s) are busy and cannot be unloaded now)" if live else ""
            if too_many:
                raise InsufficientMemory(
                    f"Model {name} cannot load: {len(live)} models are loaded and busy (max_models="
                    f"{self.settings.max_models}). Wait for them to finish, unload one (`mr-notebook unload "
                    "NAME`), or raise MR_NOTEBOOK_MAX_MODELS."
                )
            budget = (
                f"the memory budget of {format_bytes(self.settings.memory_budget)}"
                if self.settings.memory_budget is not None
                else "the memory budget (a share of free memory)"
            )
            raise InsufficientMemory(
                f"Model {name} needs about {need.describe()} but only {format_bytes(room)} of {budget} is "
                f"available{busy}. Use a smaller context (`mr-notebook configure {name} --context-size 2048`), "
                "a smaller quantization, unload other models (`mr-notebook unload --all`), or raise "
                "MR_NOTEBOOK_MEMORY_BUDGET."
            )
