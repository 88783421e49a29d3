"""The engine interface every front end (magics, widgets, CLI) codes against, and its chat stream.

Two implementations answer it: :class:`~mr_notebook.client.remote.RemoteEngine` (HTTP to a Jupyter
server extension or ``mr-notebook serve``) and :class:`~mr_notebook.client.local.LocalEngine` (a Store and
a Runner inside this process). Results are plain JSON-shaped data (Docker Model Runner's shapes), so a front
end renders the same thing whichever engine answered.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mr_notebook.errors import Cancelled

if TYPE_CHECKING:
    from mr_notebook.store.pull import PullProgress

# Aliases, because inside the engine classes the name ``list`` is the ``list`` verb.
#: Rows of JSON objects (``list``, ``ps``).
Rows = list[dict[str, Any]]
#: OpenAI chat messages.
Messages = list[dict[str, Any]]
#: Input texts of ``embed``.
Lines = list[str]
#: Embedding vectors.
Vectors = list[list[float]]
#: The streams of ``chat_choices`` (one per choice).
Streams = list["ChatStream"]

#: Progress callback of :meth:`Engine.pull`; called from the pulling thread.
ProgressCallback = Callable[["PullProgress"], None]


@dataclass(frozen=True)
class PullSummary:
    """What a finished pull left in the store."""

    #: The stored model in Docker Model Runner's shape (``inspect``).
    model: dict[str, Any]
    #: True when nothing had to be downloaded.
    already_present: bool = False
    #: Bytes downloaded this time.
    downloaded: int = 0

    @property
    def name(self) -> str:
        tags = self.model.get("tags") or []
        return str(tags[0]) if tags else str(self.model.get("id", ""))

    @property
    def message(self) -> str:
        """The one line every interface says when a pull ends."""
        from mr_notebook.digests import short_id
        from mr_notebook.store import format_bytes

        model_id = short_id(str(self.model.get("id", "")))
        if self.already_present:
            return f"Model {self.name} is up to date ({model_id})."
        return f"Pulled {self.name} ({model_id}, {format_bytes(self.downloaded)} downloaded)."


class ChatStream(Iterator[str]):
    """Text deltas of one chat completion, produced by a background thread or event loop.

    Iterate it for the text; afterwards ``usage`` (OpenAI's dict) and ``finish_reason`` are set.
    ``close()`` may be called from any thread (a Stop button, a kernel interrupt): the iterator ends at
    once and the engine stops generating within a token or two. Use it as a context manager so an
    exception in the consumer (``KeyboardInterrupt`` included) closes it: a stream abandoned half-read
    without ``close()`` keeps generating until the reply ends (the producer holds it).
    """

    _DONE = object()

    def __init__(self, model: str) -> None:
        self.model = model
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None
        #: OpenAI ``logprobs.content`` entries received so far (requests with ``logprobs=True``), else None.
        self.logprobs: list[dict[str, Any]] | None = None
        #: The model's reasoning so far (``reasoning_content``; ``<think>`` blocks), kept out of the text deltas.
        self.reasoning = ""
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = threading.Event()
        self._finished = False
        self._on_close: Callable[[], None] | None = None

    # -- producer side (engine implementations) ---------------------------------------------
    def _emit(self, text: str, logprobs: list[dict[str, Any]] | None = None, reasoning: str = "") -> None:
        if logprobs:
            self.logprobs = (self.logprobs or []) + list(logprobs)
        # A reasoning piece wakes the consumer with an empty delta, so a view can redraw ``reasoning``.
        self.reasoning += reasoning
        self._queue.put(text)

    def _finish(self, finish_reason: str | None, usage: dict[str, int] | None) -> None:
        if finish_reason is not None:
            self.finish_reason = finish_reason
        if usage is not None:
            self.usage = usage
        self._queue.put(self._DONE)

    def _fail(self, error: BaseException) -> None:
        self._queue.put(error)

    def _set_canceller(self, cancel: Callable[[], None]) -> None:
        self._on_close = cancel
        if self._closed.is_set():
            cancel()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called (the consumer asked to stop)."""
        return self._closed.is_set()

    # -- consumer side ----------------------------------------------------------------------
    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str:
        if self._finished or self._closed.is_set():
            self._finished = True
            raise StopIteration
        # SimpleQueue.get blocks in an interruptible lock wait, so a kernel interrupt lands here.
        item = self._queue.get()
        if item is self._DONE or self._closed.is_set():
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._finished = True
            if isinstance(item, Cancelled) and self._closed.is_set():
                raise StopIteration
            raise item
        text: str = item
        return text

    def text(self) -> str:
        """Drain the stream and return the whole reply."""
        return "".join(self)

    def close(self) -> None:
        """Stop the stream (thread-safe, idempotent); the engine cancels the generation."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._queue.put(self._DONE)
        if self._on_close is not None:
            self._on_close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Choices:
    """The ``n`` streams of one request with ``n`` > 1 (one prompt evaluation, forked): the producer sends each
    delta to its choice's stream; all end with the request. Closing any of them cancels the request."""

    def __init__(self, model: str, n: int) -> None:
        self.streams = [ChatStream(model) for _ in range(n)]
        self._finish_reasons: dict[int, str] = {}
        self._deltas = [0] * n

    def emit(self, index: int, text: str, logprobs: list[dict[str, Any]] | None = None, reasoning: str = "") -> None:
        if 0 <= index < len(self.streams):
            self._deltas[index] += 1
            self.streams[index]._emit(text, logprobs, reasoning)

    def choice_done(self, index: int, finish_reason: str | None) -> None:
        if finish_reason is not None:
            self._finish_reasons[index] = finish_reason

    def finish(self, usage: dict[str, int] | None) -> None:
        """End every stream. Usage counts the request: a stream gets its own delta count (≈ its tokens)."""
        for index, stream in enumerate(self.streams):
            own = {"completion_tokens": self._deltas[index]}
            if usage and "prompt_tokens" in usage:
                own["prompt_tokens"] = usage["prompt_tokens"]
            stream._finish(self._finish_reasons.get(index), own)

    def fail(self, error: BaseException) -> None:
        for stream in self.streams:
            stream._fail(error)

    @property
    def closed(self) -> bool:
        return any(stream.closed for stream in self.streams)

    def set_canceller(self, cancel: Callable[[], None]) -> None:
        def closer(own: ChatStream) -> Callable[[], None]:
            def close_all() -> None:
                if own._finished:  # read to its end (a `with` block leaving): the other choices go on
                    return
                cancel()
                for stream in self.streams:
                    stream.close()

            return close_all

        for stream in self.streams:
            stream._set_canceller(closer(stream))


@runtime_checkable
class Engine(Protocol):
    """One model engine, reached over HTTP or living in this process. All methods are blocking.

    Errors are :class:`~mr_notebook.errors.MrNotebookError` subclasses whichever engine answered
    (``ModelNotFound``, ``InvalidReference``, ``InsufficientMemory``, ``EngineUnavailable`` …).
    """

    #: "remote" (HTTP to a Jupyter server or ``mr-notebook serve``) or "local" (in this process).
    mode: str
    #: How it was found, for ``%model status``: "MR_NOTEBOOK_URL", "runtime file …", "in-process".
    source: str

    @property
    def url(self) -> str | None:
        """Endpoint root ending in "/" (OpenAI routes under ``{url}v1``); None while not served."""

    def list(self) -> Rows:
        """Stored models, Docker shape: ``[{"id", "tags", "created", "config": {...}}]``."""

    def inspect(self, ref: str) -> dict[str, Any]:
        """One stored model, Docker shape plus ``settings``."""

    def pull(
        self, ref: str, progress: ProgressCallback | None = None, *, cancel: threading.Event | None = None
    ) -> PullSummary:
        """Pull from a registry; ``progress`` gets PullProgress events (from another thread)."""

    def package(self, path: str, name: str, *, link: bool = True) -> dict[str, Any]:
        """Add a GGUF file of this machine under ``name`` (hard-linked when the store is on its filesystem and
        ``link``, else copied or sent); returns the stored model."""

    def tag(self, source: str, target: str) -> dict[str, Any]:
        """Give a stored model another name; returns it."""

    def rm(self, refs: Sequence[str], *, force: bool = False) -> Rows:
        """Remove names; Docker's answer ``[{"Untagged": name}, …, {"Deleted": id}]``. A loaded model is unloaded
        first when idle; a busy one is refused (ModelInUse) unless ``force``."""

    def prune(self) -> dict[str, int]:
        """Delete partial downloads and unused blobs: ``{"files", "bytes"}``."""

    def purge(self, *, force: bool = False) -> dict[str, int]:
        """Unload every model and delete every stored one: ``{"models", "bytes", "unloaded"}`` (ModelInUse when a
        loaded model is busy, unless ``force``)."""

    def df(self) -> dict[str, int]:
        """Disk use: ``{"blobs", "partials", "total", "models"}`` (bytes, bytes, bytes, count)."""

    def ps(self) -> Rows:
        """Loaded models: ``{"model", "id", "pid", "memory", "context_size", "keep_alive", "expires_at",
        "loaded_at", "last_used", "in_flight", "queued"}`` (ModelStatus.to_json)."""

    def load(
        self, ref: str, *, keep_alive: float | str | None = None, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Load a model now (``%model run``); ``progress`` gets load events; returns its ps row."""

    def unload(self, refs: Sequence[str] | None = None) -> int:
        """Unload the named models, or all with None; returns how many were unloaded."""

    def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | str | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        """Persist per-model settings; idle workers reload now, busy ones when idle. Returns
        ``{"model", "settings", "reloaded", "pending"}``."""

    def status(self) -> dict[str, Any]:
        """Where the engine is: ``{"mode", "source", "url", "running", "store", "loaded", ...}``."""

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> ChatStream:
        """Start a chat completion; ``params`` are OpenAI body fields (temperature, max_tokens, seed,
        stop, response_format …). Errors that happen before the first token raise on first ``next``."""

    def chat_choices(self, model: str, messages: Messages, n: int, **params: Any) -> Streams:
        """``n`` answers from one request (``n`` in the body: one prompt evaluation, forked); one stream each."""

    def embed(self, model: str, inputs: Lines) -> Vectors:
        """One vector per input."""

    def endpoint(self) -> tuple[str, str]:
        """``(base_url ending in /v1, api_key)`` for OpenAI-compatible SDKs; in-process engines start
        their HTTP endpoint on demand."""

    def close(self) -> None:
        """Release what this object holds (HTTP connections; an in-process engine's workers)."""
