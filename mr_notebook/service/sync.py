"""A ModelService for code with no event loop (the in-process engine, the CLI): ``sync.call(sync.service.X())``.

It runs the service on a private event loop in a daemon thread. ``call`` blocks until the coroutine answers;
a KeyboardInterrupt while waiting cancels the work on the loop too. Streaming calls (chat) schedule their
coroutines on ``loop`` themselves. One generic ``call`` instead of a blocking twin of every method keeps
the service's signatures in one place (and typed: ``call`` returns what the coroutine returns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mr_notebook.engine.sync import LoopThread
from mr_notebook.service.core import ModelService
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store


class SyncService(LoopThread):
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
        super().__init__("mr-notebook-service")
        self.service = ModelService(store, settings=settings, engines=engines, env=env, mode=mode)

    def close(self) -> None:
        """End every worker, then the loop thread (idempotent)."""
        self._stop(self.service.close())
