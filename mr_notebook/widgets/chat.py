"""ChatWidget: a conversation with a stored model, streamed into the notebook.

The reply is generated in a background thread (one per turn), so the kernel stays free while it streams and
the Stop button's message can reach us; Stop closes the engine's stream, which makes the engine stop
generating. Tokens are appended to ``messages`` as they arrive, but the synced trait is reassigned at most every
``sync_interval`` seconds (and once at the end), so a fast model does not flood the comm with one message per
token. The model's reasoning streams with the answer (shown collapsed above it); with the token view on, a
reply's tokens and their alternatives are attached once it ends (they would multiply every sync's size).

The conversation is a :class:`~mr_notebook.conversation.Conversation` (the type ``%%chat`` keeps);
``messages`` is its entries, as the browser draws them.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import anywidget
import traitlets

from mr_notebook.conversation import Conversation, compact_logprobs, reply_entry
from mr_notebook.errors import ChatBusy, InvalidRequest, MrNotebookError
from mr_notebook.store.refs import normalize
from mr_notebook.widgets._common import (
    MARKDOWN_LIBRARIES,
    STATIC,
    bundle,
    current_engine,
    engine_label,
    error_text,
    model_names,
)

if TYPE_CHECKING:
    from mr_notebook.client import ChatStream, Engine

log = logging.getLogger(__name__)

#: Alternatives asked for per token in the token view (as ``%%chat --logprobs``).
TOP_LOGPROBS = 5


class ChatWidget(anywidget.AnyWidget):  # type: ignore[misc]
    """Chat with a model: Markdown conversation, input box, Send/Stop/Clear, model picker, settings.

    From Python: ``w.send("Hi")`` waits for the reply and returns its text (or raises the error it shows
    inline); ``w.submit("Hi")`` returns at once with a ``Future[str]``; ``w.stop()`` ends the reply;
    ``w.messages`` is the conversation (``{"role", "content"}`` dicts; ``"error"`` entries are shown but never
    sent to the model); ``w.conversation`` is the same as a :class:`~mr_notebook.conversation.Conversation`.
    ``w.logprobs = True`` (the "Tokens" toggle) asks for each token's probability and shows the token view.
    """

    _esm = bundle("markdown.js", "chat.js", libraries=MARKDOWN_LIBRARIES)
    _css = STATIC / "widgets.css"

    messages = traitlets.List(traitlets.Dict()).tag(sync=True)
    model = traitlets.Unicode("").tag(sync=True)
    models = traitlets.List(traitlets.Unicode()).tag(sync=True)
    system = traitlets.Unicode("").tag(sync=True)
    temperature = traitlets.Float(0.7, min=0.0, max=2.0).tag(sync=True)
    max_tokens = traitlets.Int(512, min=1).tag(sync=True)
    busy = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    engine_info = traitlets.Unicode("").tag(sync=True)
    #: The token view: replies carry their tokens' probabilities and are shown shaded by them.
    logprobs = traitlets.Bool(False).tag(sync=True)

    #: Seconds between two syncs of the growing reply to the front end.
    sync_interval = 0.05

    def __init__(self, model: str | None = None, *, engine: Engine | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if engine is None:
            self._engine, self._owns_engine = current_engine()
        else:
            self._engine, self._owns_engine = engine, False
        self._lock = threading.RLock()
        self._stream: ChatStream | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reply_open = False  # the last entry of `messages` is the reply being streamed
        self.conversation = Conversation(entries=list(self.messages))
        self.engine_info = engine_label(self._engine)
        self.refresh_models()
        if model:
            self.model = self._stored_name(model)
        elif not self.model and self.models:
            self.model = self.models[0]
        self.on_msg(self._on_frontend_message)
        self.observe(self._messages_set, names="messages")

    @property
    def engine(self) -> Engine:
        return self._engine

    # ------------------------------------------------------------------ Python API
    def send(self, text: str, timeout: float | None = None) -> str:  # type: ignore[override]
        """Send a user message and wait for the whole reply; returns its text (partial if stopped).

        Errors are shown inline and raised. Kernel interrupt stops the reply.
        """
        future = self.submit(text)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            self.stop()
            raise

    def submit(self, text: str) -> Future[str]:
        """Send a user message without waiting: the reply streams in the background."""
        if not text.strip():
            raise InvalidRequest("Type a message first.", param="content")
        future: Future[str] = Future()
        # hold_sync: the front end gets the new message and the busy flag in one update.
        with self._lock, self.hold_sync():
            if self.busy:
                raise ChatBusy("A reply is still streaming: wait for it or call stop() first.")
            self._stop.clear()
            history = self._request_messages()
            self.conversation.add({"role": "user", "content": text})
            self._sync()
            self.busy = True
            self.status = ""
            model = self.model
            params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
            if self.logprobs:
                params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            thread = threading.Thread(
                target=self._generate,
                args=(model, [*history, {"role": "user", "content": text}], params, future),
                name="mr-notebook-chat",
                daemon=True,
            )
            self._thread = thread
        thread.start()
        return future

    def stop(self) -> None:
        """Stop the reply that is streaming (no-op when idle); the engine stops generating."""
        with self._lock:
            self._stop.set()
            stream = self._stream
        if stream is not None:
            stream.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no reply is streaming; False on timeout."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def clear(self) -> None:
        """Stop any reply and forget the conversation."""
        self.stop()
        self.wait(5.0)
        with self._lock:
            self.conversation.entries = []
            self._sync()
            self.status = ""

    def refresh_models(self) -> None:
        """Re-read the stored model names for the picker."""
        try:
            self.models = model_names(self._engine.list())
        except Exception as error:  # the widget must render even when the engine is down
            log.warning("could not list models: %s", error)
            self._append({"role": "error", "content": error_text(error)})

    def _stored_name(self, model: str) -> str:
        """The picker's spelling of ``model`` (``tiny`` → ``ai/tiny:latest``) when it is stored."""
        try:
            name = normalize(model)
        except MrNotebookError:  # not a valid reference: sending will say why, inline
            return model
        return name if name in self.models else model

    def close(self) -> None:
        """Stop generation, close the widget, and the engine if the widget opened it."""
        if hasattr(self, "_lock"):  # ipywidgets also calls close() on a widget whose __init__ failed
            self.stop()
        super().close()
        if getattr(self, "_owns_engine", False):
            self._owns_engine = False
            self._engine.close()

    # ------------------------------------------------------------------ conversation bookkeeping
    def _request_messages(self) -> list[dict[str, Any]]:
        """What the model sees: system prompt, then user/assistant turns; a turn that failed is left out."""
        return self.conversation.messages(system=self.system)

    def _sync(self) -> None:
        """Show the conversation: ``messages`` is a copy of its entries (a new list, so the trait syncs)."""
        with self._lock:
            self.messages = list(self.conversation.entries)

    def _messages_set(self, change: dict[str, Any]) -> None:
        """``w.messages = [...]`` from Python (a saved conversation, say) becomes the conversation."""
        with self._lock:
            if change["new"] != self.conversation.entries:
                self.conversation.entries = list(change["new"])

    def _append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.conversation.add(entry)
            self._sync()

    def _set_reply(self, text: str, reasoning: str = "", logprobs: list[dict[str, Any]] | None = None) -> None:
        """Create or update the assistant entry that ends the conversation."""
        with self._lock:
            entry = reply_entry(text, reasoning=reasoning, logprobs=logprobs)
            entries = self.conversation.entries
            if self._reply_open and entries and entries[-1].get("role") == "assistant":
                self.conversation.set_last(entry)
            else:
                self.conversation.add(entry)
            self._reply_open = True
            self._sync()

    def _finish_reply(self, text: str, reasoning: str = "", logprobs: list[dict[str, Any]] | None = None) -> None:
        """Write the final reply once the turn ends (a turn that produced nothing adds no entry)."""
        if text or reasoning or self._reply_open:
            self._set_reply(text, reasoning, logprobs)
        self._reply_open = False

    # ------------------------------------------------------------------ the generating thread
    def _generate(self, model: str, request: list[dict[str, Any]], params: dict[str, Any], future: Future[str]) -> None:
        text = ""
        started = time.monotonic()
        first: float | None = None
        stream: ChatStream | None = None
        try:
            if not model:
                raise InvalidRequest("Choose a model in the picker first (or pull one: `%model pull ai/smollm2`).")
            stream = self._engine.chat_stream(model, request, **params)
            with self._lock:
                self._stream = stream
            if self._stop.is_set():  # Stop pressed while the request was being set up
                stream.close()
            last_sync = float("-inf")  # the first token shows at once
            for delta in stream:
                if first is None:
                    first = time.monotonic()
                text += delta
                now = time.monotonic()
                if now - last_sync >= self.sync_interval:
                    self._set_reply(text, stream.reasoning)
                    last_sync = now
            tokens = compact_logprobs(stream.logprobs) if params.get("logprobs") else None
            with self._lock, self.hold_sync():
                self._finish_reply(text, stream.reasoning, tokens)
                self.status = _summary(stream, text, started, first)
                self._stream = None
                self.busy = False
            future.set_result(text)
        except Exception as error:
            if not isinstance(error, MrNotebookError):
                log.exception("chat with %s failed", model)
            with self._lock, self.hold_sync():
                self._finish_reply(text, stream.reasoning if stream is not None else "")
                self._append({"role": "error", "content": error_text(error)})
                self.status = "Error"
                self._stream = None
                self.busy = False
            future.set_exception(error)
        finally:
            if stream is not None:
                stream.close()

    def _on_frontend_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """Buttons and keys in the browser: these run on the kernel's main thread, so nothing here blocks."""
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        try:
            if kind == "send":
                self.submit(str(content.get("text", "")))
            elif kind == "stop":
                self.stop()
            elif kind == "clear":
                threading.Thread(target=self.clear, daemon=True).start()
            elif kind == "refresh":
                threading.Thread(target=self.refresh_models, daemon=True).start()
        except MrNotebookError as error:
            self._append({"role": "error", "content": error_text(error)})


def _summary(stream: ChatStream, text: str, started: float, first: float | None) -> str:
    """Footer line after a reply: tokens, speed, why it ended."""
    usage = stream.usage or {}
    tokens = usage.get("completion_tokens")
    parts: list[str] = []
    if tokens is not None:
        parts.append(f"{tokens} tokens")
    if first is not None:
        parts.append(f"first token {first - started:.2f} s")
        elapsed = time.monotonic() - first
        if tokens and elapsed > 0:
            parts.append(f"{tokens / elapsed:.1f} tok/s")
    reason = stream.finish_reason
    if reason == "cancelled":
        parts.append("stopped")
    elif reason == "length":
        parts.append("stopped at max tokens")
    if not text and reason != "cancelled":
        parts.append("empty reply")
    return " · ".join(parts)
