"""ModelManager: the stored models as a table with Load / Unload / Remove, a pull box with progress, totals.

Every engine call runs in a worker thread (a pool per widget), never on the kernel's main thread, so the
notebook stays usable while a model loads or a pull downloads. A light poller re-reads the table every
``refresh_interval`` seconds while the widget is open, so models loaded, unloaded or pulled elsewhere (another
kernel, ``%model``, keep-alive expiry) show up; the table is only re-sent when it changed.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import anywidget
import traitlets

from mr_notebook import current
from mr_notebook.errors import Cancelled, MrNotebookError, PullRunning
from mr_notebook.progress import Meter
from mr_notebook.tables import model_rows
from mr_notebook.widgets._common import STATIC, engine_label, error_text

if TYPE_CHECKING:
    from mr_notebook.client import Engine, PullSummary
    from mr_notebook.store.pull import PullProgress

log = logging.getLogger(__name__)

T = TypeVar("T")


class ModelManager(anywidget.AnyWidget):  # type: ignore[misc]
    """Stored models, what is loaded, disk and memory use; pull, load, unload and remove.

    The action methods return at once with a ``concurrent.futures.Future`` (call ``.result()`` to wait);
    their errors are also shown in the widget.
    """

    _esm = STATIC / "manager.js"
    _css = STATIC / "widgets.css"

    rows = traitlets.List(traitlets.Dict()).tag(sync=True)
    disk = traitlets.Dict().tag(sync=True)
    loaded_memory = traitlets.Int(0).tag(sync=True)
    pending = traitlets.Dict().tag(sync=True)
    pull_state = traitlets.Dict().tag(sync=True)
    notice = traitlets.Dict({"text": "", "kind": "info"}).tag(sync=True)
    engine_info = traitlets.Unicode("").tag(sync=True)

    def __init__(self, *, engine: Engine | None = None, refresh_interval: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._engine = engine if engine is not None else current.engine()  # the magics' too: not ours to close
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mr-notebook-manager")
        self._lock = threading.Lock()
        self._cancel_pull: threading.Event | None = None
        self._closed = threading.Event()
        self.engine_info = engine_label(self._engine)
        self.refresh()
        self.on_msg(self._on_frontend_message)
        if refresh_interval > 0:
            _start_poller(self, refresh_interval)

    @property
    def engine(self) -> Engine:
        return self._engine

    # ------------------------------------------------------------------ reading
    def refresh(self) -> None:
        """Re-read stored models, loaded models and disk use (blocking; the buttons run it in a thread)."""
        try:
            stored = self._engine.list()
            loaded = self._engine.ps()
            disk = self._engine.df()
        except Exception as error:
            self._report(error)
            return
        rows = _rows(stored, loaded)
        if rows != self.rows:
            self.rows = rows
        if disk != self.disk:
            self.disk = disk
        self.loaded_memory = sum(int(entry.get("memory") or 0) for entry in loaded)

    # ------------------------------------------------------------------ actions
    def load(self, name: str) -> Future[dict[str, Any]]:
        """Load a stored model now."""
        return self._act(name, "Loading…", lambda: self._engine.load(name), f"Loaded {name}.")

    def unload(self, name: str) -> Future[int]:
        """Unload a model (its worker process ends, its memory goes back to the system)."""
        return self._act(name, "Unloading…", lambda: self._engine.unload([name]), f"Unloaded {name}.")

    def remove(self, name: str) -> Future[list[dict[str, Any]]]:
        """Remove a stored name (the widget asks for confirmation first). The service's rule applies: an idle
        loaded model is unloaded first, a busy one is refused until its requests finish."""
        return self._act(name, "Removing…", lambda: self._engine.rm([name]), f"Removed {name}.")

    def pull(self, ref: str) -> Future[PullSummary]:
        """Pull a model from a registry, showing bytes, speed and ETA; ``cancel_pull()`` stops it."""
        ref = ref.strip()
        with self._lock:
            if self._cancel_pull is not None:
                raise PullRunning("A pull is already running here: wait for it or cancel it first.")
            cancel = self._cancel_pull = threading.Event()
        self.pull_state = {"active": True, "ref": ref, "status": "resolving", "message": f"Pulling {ref}…"}
        self.notice = {"text": "", "kind": "info"}
        meter = Meter()

        def progress(event: PullProgress) -> None:  # events come throttled (mr_notebook.progress), ~10 a second
            self.pull_state = {"active": True, "ref": ref, **meter.update(event)}

        def run() -> PullSummary:
            try:
                summary = self._engine.pull(ref, progress, cancel=cancel)
            except Cancelled:
                self.pull_state = {
                    "active": False,
                    "ref": ref,
                    "status": "cancelled",
                    "message": f"Pull of {ref} cancelled; pull again to resume where it stopped.",
                }
                raise
            except Exception as error:
                self.pull_state = {"active": False, "ref": ref, "status": "error", "message": ""}
                self._report(error)
                raise
            finally:
                with self._lock:
                    self._cancel_pull = None
            self.pull_state = {
                "active": False,
                "ref": ref,
                "status": "done",
                "message": summary.message,
                **meter.totals(),
            }
            self.refresh()
            return summary

        return self._pool.submit(run)

    def cancel_pull(self) -> None:
        """Cancel the running pull (the partial download is kept for the next pull)."""
        with self._lock:
            if self._cancel_pull is not None:
                self._cancel_pull.set()

    def close(self) -> None:
        """Stop polling and pulling and close the widget (the engine stays: it is the process's, or the caller's)."""
        if not hasattr(self, "_pool"):  # ipywidgets also calls close() on a widget whose __init__ failed
            super().close()
            return
        self._closed.set()
        self.cancel_pull()
        super().close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ plumbing
    def _act(self, name: str, label: str, call: Callable[[], T], done: str) -> Future[T]:
        with self._lock:
            if name in self.pending:
                raise MrNotebookError(f"{name} is busy ({self.pending[name]}); wait for it to finish.")
            self.pending = {**self.pending, name: label}

        def run() -> T:
            try:
                result = call()
            except Exception as error:
                self._report(error)
                raise
            else:
                self.notice = {"text": done, "kind": "info"}
                return result
            finally:
                with self._lock:
                    self.pending = {k: v for k, v in self.pending.items() if k != name}
                self.refresh()

        return self._pool.submit(run)

    def _report(self, error: BaseException) -> None:
        if not isinstance(error, MrNotebookError):
            log.error("model manager: %s", error, exc_info=error)
        self.notice = {"text": error_text(error), "kind": "error"}

    def _on_frontend_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Buttons in the browser (run on the kernel's main thread: everything here hands off to threads)."""
        if not isinstance(content, dict):
            return
        kind, name = content.get("type"), str(content.get("name", ""))
        try:
            if kind == "refresh":
                self._pool.submit(self.refresh)
            elif kind == "load":
                self.load(name)
            elif kind == "unload":
                self.unload(name)
            elif kind == "remove":
                self.remove(name)
            elif kind == "pull" and str(content.get("ref", "")).strip():
                self.pull(str(content["ref"]))
            elif kind == "cancel_pull":
                self.cancel_pull()
            elif kind == "dismiss":
                self.notice = {"text": "", "kind": "info"}
        except MrNotebookError as error:
            self._report(error)


def _rows(stored: list[dict[str, Any]], loaded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per stored name: the cells of ``list`` (the one renderer, :func:`~mr_notebook.tables.model_rows`),
    joined with ``ps`` by model id."""
    memory: dict[str, int] = {}
    for entry in loaded:
        memory[str(entry.get("id"))] = memory.get(str(entry.get("id")), 0) + int(entry.get("memory") or 0)
    rows = []
    for model in stored:
        model_id = str(model.get("id", ""))
        for cells in model_rows([model]):
            rows.append(
                {
                    "name": cells["MODEL NAME"],
                    "id": model_id,
                    "short_id": cells["MODEL ID"],
                    "parameters": cells["PARAMETERS"],
                    "quantization": cells["QUANTIZATION"],
                    "architecture": cells["ARCHITECTURE"],
                    "size": cells["SIZE"],
                    "context_size": (model.get("config") or {}).get("context_size"),
                    "loaded": model_id in memory,
                    "memory": memory.get(model_id, 0),
                }
            )
    return sorted(rows, key=lambda row: row["name"])


def _start_poller(widget: ModelManager, interval: float) -> None:
    """Refresh the table every ``interval`` s until the widget closes (holds it weakly, so it can go away)."""
    ref = weakref.ref(widget)
    closed = widget._closed

    def poll() -> None:
        while not closed.wait(interval):
            current = ref()
            if current is None or current.comm is None:
                return
            try:
                current.refresh()
            finally:
                del current

    threading.Thread(target=poll, name="mr-notebook-manager-poll", daemon=True).start()
