"""The ModelService: the product's rules, once, for every interface.

HTTP handlers, the in-process engine, the CLI and the widgets translate to and from it and hold no rules of
their own. It owns the store and the Runner, returns typed results (:mod:`.results`) and raises the errors of
:mod:`mr_notebook.errors`. Every method is a coroutine that never blocks its event loop: store reads and
writes, lock waits and file hashing run in a thread (``asyncio.to_thread``), so a Jupyter server's IOLoop
keeps answering while another process holds the store's index lock.

Rules kept here (and nowhere else):

- ``rm``/``purge`` of a loaded model: an idle worker is unloaded first; a busy one (requests in flight or
  queued) is refused with :class:`~mr_notebook.errors.ModelInUse` unless ``force``, which ends it too (its
  requests fail). Removing one of several names of a model touches no worker.
- ``configure`` persists settings, then reloads idle workers of the model at once and busy ones when they go
  idle.
- Remote engines' models (``ENGINE/<id>``) are listed, inspected, loaded and shown by ``ps``; ``rm`` and
  ``configure`` refuse them (they are not stored here).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from mr_notebook import __version__
from mr_notebook.errors import InvalidRequest, LocalFileNotFound, ModelInUse, MrNotebookError
from mr_notebook.service.results import (
    DiskUsage,
    LoadedModel,
    ModelEntry,
    Progress,
    PruneResult,
    PullResult,
    PurgeResult,
    Reconfigured,
    RemoteModel,
    Removal,
    ServiceStatus,
)
from mr_notebook.settings import EngineSettings, parse_duration
from mr_notebook.store import ModelRecord, Store, parse_ref

if TYPE_CHECKING:
    from mr_notebook.engine import Runner
    from mr_notebook.service.upload import Upload

#: A progress callback: called on the service's event loop, in event order.
ProgressCallback = Callable[[Progress], None]
T = TypeVar("T")


class ModelService:
    """Store + Runner + rules. One per host process, created by the host and passed on (no singletons).

    ``runner``: the host's Runner; when None, one is created on first need (``ready_runner``), so store-only
    verbs in a kernel never start engine machinery. ``env`` replaces ``os.environ`` for settings read here
    (pull credentials, Hub endpoint). ``mode`` is what ``status`` reports.
    """

    def __init__(
        self,
        store: Store,
        runner: Runner | None = None,
        *,
        settings: EngineSettings | None = None,
        engines: Iterable[Mapping[str, Any]] = (),
        env: Mapping[str, str] | None = None,
        mode: str = "local",
    ) -> None:
        self._store = store
        self._runner = runner
        self._settings = settings
        self._engines = list(engines)
        self._env = env
        self.mode = mode
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        # Verbs that take the store's index lock wait for it on threads of their own: another process holding
        # the lock must not fill the default executor, which reads the store for every request.
        self._lock_waiters = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mr-notebook-store")

    def __repr__(self) -> str:
        return f"<ModelService store={str(self._store.home)!r} mode={self.mode!r}>"

    # ------------------------------------------------------------------ the engine
    @property
    def store(self) -> Store:
        """The store this service owns."""
        return self._store

    @property
    def runner(self) -> Runner | None:
        """The Runner if it exists yet (None: no model was ever needed, so nothing is loaded)."""
        return self._runner

    async def ready_runner(self) -> Runner:
        """The Runner, created if needed and started on the running loop (generation routes call it)."""
        if self._runner is not None and self._started:
            return self._runner
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._runner is None:
                from mr_notebook.engine import Runner

                settings = self._settings if self._settings is not None else EngineSettings.from_env(self._env)
                self._runner = Runner(self._store, settings, self._engines)
            if not self._started:
                await self._runner.start()
                self._started = True
        return self._runner

    async def close(self) -> None:
        """End every worker (loads in progress included) and close remote engine clients."""
        if self._runner is not None:
            await self._runner.close()
        self._lock_waiters.shutdown(wait=False)

    async def _locked(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``work`` (a store verb that takes the index lock) on a lock-waiting thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lock_waiters, functools.partial(work, *args, **kwargs))

    def _loaded(self, *, loading: bool = False) -> builtins.list[LoadedModel]:
        """Loaded models; with ``loading``, models whose worker is starting too (as busy: a request waits)."""
        runner = self._runner
        if runner is None:
            return []
        rows = [LoadedModel.from_status(s) for s in runner.ps()]
        if loading:
            rows += [LoadedModel(name, mid, "llama.cpp", queued=1) for mid, name in runner.loading().items()]
        return rows

    # ------------------------------------------------------------------ store verbs
    async def list(self) -> builtins.list[ModelEntry]:
        """Stored models (newest first), then remote engines' models."""
        records: builtins.list[ModelEntry] = list(await asyncio.to_thread(self._store.list))
        runner = await self.ready_runner()
        return records + [RemoteModel(engine.name, model) for engine, model in await runner.remote.models()]

    async def inspect(self, ref: str) -> ModelEntry:
        """One model: stored (ModelRecord) or a remote engine's (RemoteModel). ModelNotFound if neither."""
        remote = await self._remote(ref)
        if remote is not None:
            return remote
        return await asyncio.to_thread(self._store.get, ref)

    async def _remote(self, ref: str) -> RemoteModel | None:
        runner = await self.ready_runner()
        found = runner.remote.resolve(ref)
        if found is None:
            return None
        engine, remote_id = found
        spec = engine.spec
        config = {"url": spec.url, "kind": spec.kind, "remote_id": remote_id}
        # Requests the engine takes at once from us: what batch helpers (map, %%chat -n) may send together.
        return RemoteModel(engine.name, remote_id, config, {"parallel": spec.max_concurrency})

    async def pull(
        self,
        ref: str,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> PullResult:
        """Pull from a registry or the Hub (in a thread). Cancelling the awaiting task, or setting ``cancel``,
        stops the download (the partial file is kept for the next pull to resume) and raises."""
        from mr_notebook.store.pull import pull

        parse_ref(ref)  # a bad reference raises here, before a thread starts
        loop = asyncio.get_running_loop()
        stop = cancel if cancel is not None else threading.Event()

        def report(event: Progress) -> None:  # on the pull's thread: hand it to the loop, in order
            if progress is not None:
                loop.call_soon_threadsafe(progress, event)

        def run() -> PullResult:
            return pull(self._store, ref, progress=report if progress else None, cancel=stop, env=self._env)

        return await in_thread(run, stop, f"pull {ref}")

    async def package(self, path: str, name: str, *, link: bool = True) -> ModelRecord:
        """Add a GGUF file this process can read as ``name`` (split models: give part 1). Hard-linked into the
        store when it is on the same filesystem (no bytes copied), else copied; hashed either way."""
        parse_ref(name)
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidRequest("path must be the path of a .gguf file this server can read.", "path")

        def package() -> ModelRecord:
            try:
                return self._store.import_gguf(path, name, link=link)
            except MrNotebookError:
                raise
            except OSError as exc:  # a name too long, a folder we may not read: the path is the problem
                raise LocalFileNotFound(
                    f"Cannot read {path[:200]!r} ({exc.strerror or exc}); give the path of a .gguf file this "
                    "server can read."
                ) from exc

        return await in_thread(package, None, f"package {name}")

    def upload(self, name: str, *, size: int | None = None, digest: str | None = None) -> Upload:
        """Start receiving a GGUF file's bytes for model ``name`` (``POST /models/load``): they stream to a
        partial file and are hashed on the way; ``await upload.finish()`` publishes the model, ``abort()``
        deletes the partial. ``size``/``digest``, when given, are checked before anything becomes visible."""
        from mr_notebook.service.upload import Upload

        return Upload(self._store, parse_ref(name), size=size, digest=digest)

    async def tag(self, source: str, target: str) -> ModelRecord:
        """Give a stored model another name; returns it with all its names."""
        parse_ref(target)
        return await self._locked(self._store.tag, source, target)

    async def rm(self, refs: Sequence[str], *, force: bool = False) -> Removal:
        """Remove names; a model left without a name is deleted, its idle workers unloaded first.

        ModelInUse (409) without ``force``: a busy loaded model, or a model given by id that has several names.
        """
        (await self.ready_runner()).remote.refuse(refs, "rm")  # ENGINE/<id> is not stored here: say so
        doomed = await asyncio.to_thread(self._store.doomed, refs, force=force)
        ids = {record.id for record in doomed}
        loaded = [row for row in self._loaded(loading=True) if row.id in ids]
        unloaded = await self._end_workers(loaded, force, "remove")
        removal = await self._locked(self._store.remove, refs, force=force)
        return dataclasses.replace(removal, unloaded=unloaded)

    async def _end_workers(self, rows: builtins.list[LoadedModel], force: bool, verb: str) -> builtins.list[str]:
        """The rule for deleting loaded models: idle ones are unloaded; busy ones only with ``force``."""
        busy = [row for row in rows if row.busy]
        if busy and not force:
            names = ", ".join(f"{row.model} ({row.in_flight} running, {row.queued} waiting)" for row in busy)
            raise ModelInUse(
                f"Cannot {verb} {names}: the model is answering requests. Wait for them to finish, or force it "
                "(-f / ?force=true), which ends those requests."
            )
        if rows and self._runner is not None:
            await self._runner.unload([row.model for row in rows])
        return [row.model for row in rows]

    async def prune(self) -> PruneResult:
        """Delete partial downloads nobody writes and blobs no model or pull uses."""
        return PruneResult(**await self._locked(self._store.prune))

    async def purge(self, *, force: bool = False) -> PurgeResult:
        """Unload every model, then delete every stored model and blob (pulls in flight keep theirs).

        ModelInUse (409) without ``force`` when a loaded model is busy.
        """
        unloaded = await self._end_workers(self._loaded(loading=True), force, "purge")
        report = await self._locked(self._store.purge)
        return PurgeResult(models=report["models"], bytes=report["bytes"], unloaded=len(unloaded))

    async def df(self) -> DiskUsage:
        """Disk used by the store."""
        return DiskUsage(**await asyncio.to_thread(self._store.df))

    async def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | str | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> Reconfigured:
        """Validate and persist per-model settings (InvalidRequest names a bad one), then apply them: idle
        workers reload now, busy ones when they go idle."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidRequest("model is required: the stored model to configure, e.g. ai/smollm2.", "model")
        runner = await self.ready_runner()
        runner.remote.refuse([ref], "configure")
        settings = model_settings(context_size=context_size, keep_alive=keep_alive, threads=threads, parallel=parallel)
        record = await self._locked(self._store.configure, ref, **settings)
        reloaded, pending = await runner.reconfigure(record.id)
        return Reconfigured(record, reloaded, pending)

    # ------------------------------------------------------------------ engine verbs
    async def load(
        self,
        ref: str,
        *,
        keep_alive: float | str | None = None,
        progress: ProgressCallback | None = None,
    ) -> LoadedModel:
        """Load a model now (its keep_alive timer starts at once) and return its ``ps`` row; a remote model is
        only looked up. The load belongs to the Runner: a caller that goes away does not cancel it."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidRequest("model is required: the model to load, e.g. ai/smollm2.", "model")
        seconds = None if keep_alive is None else parse_duration(keep_alive)
        runner = await self.ready_runner()
        remote = runner.remote.resolve(ref)
        if remote is not None:
            engine = remote[0]
            return LoadedModel.from_engine({**engine.status(), "name": f"{engine.name}/{remote[1]}"})
        status = await runner.load(ref, keep_alive=seconds, progress=progress)
        return LoadedModel.from_status(status)

    async def unload(self, refs: Sequence[str] | None = None) -> int:
        """End the workers of ``refs`` (None: all); returns how many were running."""
        if refs is not None and (isinstance(refs, str) or not all(isinstance(r, str) for r in refs)):
            raise InvalidRequest("models must be a list of model names.", "models")
        if self._runner is None:
            return 0
        return await self._runner.unload(None if refs is None else list(refs))

    async def ps(self) -> builtins.list[LoadedModel]:
        """Loaded models (most recently used first), then remote engines that have served requests."""
        rows = self._loaded()
        if self._runner is not None:
            rows += [LoadedModel.from_engine(e) for e in self._runner.remote.status() if e.get("requests")]
        return rows

    async def status(self) -> ServiceStatus:
        """What is serving, and how."""
        runner = await self.ready_runner()
        return ServiceStatus(
            version=__version__,
            mode=self.mode,
            loaded_models=len(runner.ps()),
            max_queue=runner.settings.max_queue,
            store=str(self._store.home),
            engines=runner.remote.status(),
        )


def model_settings(
    *,
    context_size: Any = None,
    keep_alive: Any = None,
    threads: Any = None,
    parallel: Any = None,
) -> dict[str, Any]:
    """The settings given (None: not given), checked: each bad value is an InvalidRequest naming it."""
    settings: dict[str, Any] = {}
    if context_size is not None:
        if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 1:
            raise InvalidRequest("context_size must be a positive integer (tokens), e.g. 4096.", "context_size")
        settings["context_size"] = context_size
    if keep_alive is not None:
        settings["keep_alive"] = parse_duration(keep_alive)
    for key, value in (("threads", threads), ("parallel", parallel)):  # CPU threads, sequences at once
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
                raise InvalidRequest(f"{key} must be an integer from 1 to 1024.", key)
            settings[key] = value
    return settings


async def in_thread(work: Callable[[], T], cancel: threading.Event | None, what: str) -> T:
    """Run long blocking work (a pull, hashing a file) on a thread of its own, not the shared executor.

    Store reads take ``asyncio.to_thread`` (short); a pull may run for hours and would hold one of the
    default executor's few threads. If the awaiting task is cancelled, ``cancel`` is set and the work is
    waited for (it stops at its next check), so nothing keeps writing after the caller has gone.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name=f"mr-notebook {what}", daemon=True).start()
    try:
        result: T = await asyncio.shield(done)
        return result
    except asyncio.CancelledError:
        if cancel is not None:
            cancel.set()
        await asyncio.wait({done})
        if not done.cancelled():
            done.exception()  # retrieved: the caller is gone, its cancellation is what propagates
        raise


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
