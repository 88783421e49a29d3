"""A ModelService for code with no event loop (the in-process engine, the CLI): ``sync.call(sync.service.X())``.

It runs the service on a private event loop in a daemon thread. ``call`` blocks until the coroutine answers;
a KeyboardInterrupt while waiting cancels the work on the loop too. Streaming calls (chat) schedule their
coroutines on ``loop`` themselves. One generic ``call`` instead of a blocking twin of every method keeps
the service's signatures in one place (and typed: ``call`` returns what the coroutine returns).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from mr_notebook.service.core import ModelService
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store

T = TypeVar("T")


class SyncService:
    """A ModelService on its own loop thread (started at once; the Runner only when a model is needed)."""

    def __init__(
        self,
        store: Store,
        *,
        settings: EngineSettings | None = None,
        engines: Iterable[Mapping[str, Any]] = (),
        env: Mapping[str, str] | None = None,
        mode: str = "local",
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mr-notebook-service", daemon=True)
        self._thread.start()
        self.service = ModelService(store, settings=settings, engines=engines, env=env, mode=mode)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine (usually ``self.service.<verb>(…)``) on the service's loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: stop the work on the loop too
            raise

    def close(self) -> None:
        """End every worker, then the loop thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.call(self.service.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()
