"""What a host hands to the handlers through the Tornado application settings (no globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mr_notebook.api.metrics import Metrics
from mr_notebook.service import ModelService

if TYPE_CHECKING:
    from mr_notebook.engine import Runner
    from mr_notebook.store import Store

#: Key of the :class:`ApiContext` in ``tornado.web.Application.settings``.
SETTINGS_KEY = "mr_notebook"
DEFAULT_MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class ApiLimits:
    """Request limits (the queue length lives in ``EngineSettings.max_queue``)."""

    #: Request bodies above this many bytes get 413.
    max_body_size: int = DEFAULT_MAX_BODY
    #: Cap on ``max_tokens`` (None: only the model's context caps it).
    max_tokens: int | None = None
    #: Bytes a GGUF upload (``POST /models/load``) may have; streamed to disk, never buffered.
    max_upload_size: int = 1024**4


@dataclass
class ApiContext:
    """The service (store + runner + rules) and the limits one app serves; created by the host."""

    store: Store
    runner: Runner
    limits: ApiLimits = field(default_factory=ApiLimits)
    metrics: Metrics = field(default_factory=Metrics)
    #: "jupyter", "standalone" or "kernel": shown by /engines/status.
    mode: str = "standalone"
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    #: The product's rules; handlers only translate to and from it.
    service: ModelService = field(init=False)

    def __post_init__(self) -> None:
        self.service = ModelService(self.store, self.runner, mode=self.mode)

    @classmethod
    def of(
        cls, service: ModelService, runner: Runner, limits: ApiLimits | None = None, mode: str = "kernel"
    ) -> ApiContext:
        """The context serving an existing service (``%model serve`` of an in-process engine); ``runner`` is its
        started Runner (``await service.ready_runner()``)."""
        context = cls(service.store, runner, limits or ApiLimits(), mode=mode)
        service.mode = mode
        context.service = service
        return context

    async def ready_runner(self) -> Runner:
        """The runner, started on the serving loop the first time a request needs it."""
        return await self.service.ready_runner()

    def in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the response, keeping a reference so the task is not garbage collected."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for background work, then end every worker process."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.service.close()
