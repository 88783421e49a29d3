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

import builtins
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mr_notebook.service.results import (
    DiskUsage,
    LoadedModel,
    ModelEntry,
    Progress,
    PruneResult,
    PullResult,
    PurgeResult,
    Reconfigured,
    Removal,
    ServiceStatus,
)
from mr_notebook.settings import EngineSettings
from mr_notebook.store import ModelRecord, Store

if TYPE_CHECKING:
    from mr_notebook.engine import Runner
    from mr_notebook.service.upload import Upload

#: A progress callback: called on the service's event loop, in event order.
ProgressCallback = Callable[[Progress], None]


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
        raise NotImplementedError

    # ------------------------------------------------------------------ the engine
    @property
    def store(self) -> Store:
        """The store this service owns."""
        raise NotImplementedError

    @property
    def runner(self) -> Runner | None:
        """The Runner if it exists yet (None: no model was ever needed, so nothing is loaded)."""
        raise NotImplementedError

    async def ready_runner(self) -> Runner:
        """The Runner, created if needed and started on the running loop (generation routes call it)."""
        raise NotImplementedError

    async def close(self) -> None:
        """End every worker (loads in progress included) and close remote engine clients."""
        raise NotImplementedError

    # ------------------------------------------------------------------ store verbs
    async def list(self) -> builtins.list[ModelEntry]:
        """Stored models (newest first), then remote engines' models."""
        raise NotImplementedError

    async def inspect(self, ref: str) -> ModelEntry:
        """One model: stored (ModelRecord) or a remote engine's (RemoteModel). ModelNotFound if neither."""
        raise NotImplementedError

    async def pull(
        self,
        ref: str,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> PullResult:
        """Pull from a registry or the Hub (in a thread). Cancelling the awaiting task, or setting ``cancel``,
        stops the download (the partial file is kept for the next pull to resume) and raises."""
        raise NotImplementedError

    async def package(self, path: str, name: str, *, link: bool = True) -> ModelRecord:
        """Add a GGUF file this process can read as ``name`` (split models: give part 1). Hard-linked into the
        store when it is on the same filesystem (no bytes copied), else copied; hashed either way."""
        raise NotImplementedError

    def upload(self, name: str, *, size: int | None = None, digest: str | None = None) -> Upload:
        """Start receiving a GGUF file's bytes for model ``name`` (``POST /models/load``): they stream to a
        partial file and are hashed on the way; ``await upload.finish()`` publishes the model, ``abort()``
        deletes the partial. ``size``/``digest``, when given, are checked before anything becomes visible."""
        raise NotImplementedError

    async def tag(self, source: str, target: str) -> ModelRecord:
        """Give a stored model another name; returns it with all its names."""
        raise NotImplementedError

    async def rm(self, refs: Sequence[str], *, force: bool = False) -> Removal:
        """Remove names; a model left without a name is deleted, its idle workers unloaded first.

        ModelInUse (409) without ``force``: a busy loaded model, or a model given by id that has several names.
        """
        raise NotImplementedError

    async def prune(self) -> PruneResult:
        """Delete partial downloads nobody writes and blobs no model or pull uses."""
        raise NotImplementedError

    async def purge(self, *, force: bool = False) -> PurgeResult:
        """Unload every model, then delete every stored model and blob (pulls in flight keep theirs).

        ModelInUse (409) without ``force`` when a loaded model is busy.
        """
        raise NotImplementedError

    async def df(self) -> DiskUsage:
        """Disk used by the store."""
        raise NotImplementedError

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
        raise NotImplementedError

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
        raise NotImplementedError

    async def unload(self, refs: Sequence[str] | None = None) -> int:
        """End the workers of ``refs`` (None: all); returns how many were running."""
        raise NotImplementedError

    async def ps(self) -> builtins.list[LoadedModel]:
        """Loaded models (most recently used first), then remote engines that have served requests."""
        raise NotImplementedError

    async def status(self) -> ServiceStatus:
        """What is serving, and how."""
        raise NotImplementedError
