"""An engine in this process: the store on disk and a Runner whose workers are child processes.

Store verbs (list, inspect, tag, rm …) never start the Runner, so ``%model list`` stays fast and imports
no engine code; the Runner starts with the first verb that needs a model (run, chat, ps with models).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mr_notebook.client.base import (
    ChatStream,
    Choices,
    Lines,
    Messages,
    ProgressCallback,
    PullSummary,
    Rows,
    Streams,
    Vectors,
)
from mr_notebook.errors import ModelInUse, MrNotebookError
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store, format_bytes

if TYPE_CHECKING:
    from mr_notebook.engine import SyncRunner

log = logging.getLogger(__name__)


class LocalEngine:
    """Store + :class:`~mr_notebook.engine.SyncRunner` in this process (no server, or ``%model serve``)."""

    mode = "local"

    def __init__(
        self,
        store: Store,
        settings: EngineSettings | None = None,
        *,
        source: str = "in-process",
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.source = source
        self._settings = settings
        self._env = env
        self._sync: SyncRunner | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        #: (model id, configured template) → (template thinks, generation prompt opens <think>).
        self._thinks: dict[tuple[str, str], tuple[bool, bool]] = {}

    def __repr__(self) -> str:
        return f"<LocalEngine store={str(self.store.home)!r} url={self.url!r}>"

    # ------------------------------------------------------------------ runner, server
    @property
    def runner(self) -> SyncRunner:
        """The Runner, started on first use (imports the engine package then, never llama_cpp)."""
        with self._lock:
            if self._sync is None:
                from mr_notebook.engine import SyncRunner

                settings = self._settings or EngineSettings.from_env(self._env)
                self._sync = SyncRunner(self.store, settings)
            return self._sync

    @property
    def started(self) -> bool:
        """Whether the Runner exists (some model was asked for)."""
        return self._sync is not None

    @property
    def url(self) -> str | None:
        return str(self._server.url) if self._server is not None else None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Expose this engine over HTTP from a background thread (``%model serve``); returns its URL."""
        runner = self.runner
        with self._lock:
            if self._server is None:
                from mr_notebook.api.standalone import start_in_thread

                self._server = start_in_thread(runner, self.store, host, port)
                log.info("in-kernel engine serving at %s", self._server.url)
            return str(self._server.url)

    def endpoint(self) -> tuple[str, str]:
        url = self.url or self.serve()
        return url.rstrip("/") + "/v1", "not-needed"

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
            sync, self._sync = self._sync, None
        if server is not None:
            server.stop()
        if sync is not None:
            sync.close()

    # ------------------------------------------------------------------ store verbs
    def list(self) -> Rows:
        return [record.to_json() for record in self.store.list()]

    def inspect(self, ref: str) -> dict[str, Any]:
        return self.store.get(ref).to_json()

    def pull(
        self, ref: str, progress: ProgressCallback | None = None, *, cancel: threading.Event | None = None
    ) -> PullSummary:
        from mr_notebook.store.pull import pull

        result = pull(self.store, ref, progress=progress, cancel=cancel, env=self._env)
        name = result.record.name
        if result.already_present:
            message = f"Model {name} is up to date."
        else:
            message = f"Pulled {name} ({format_bytes(result.downloaded)} downloaded)."
        return PullSummary(result.record.to_json(), message, result.already_present)

    def package(self, path: str, name: str) -> dict[str, Any]:
        return self.store.import_gguf(path, name).to_json()

    def tag(self, source: str, target: str) -> dict[str, Any]:
        return self.store.tag(source, target).to_json()

    def rm(self, refs: Sequence[str], *, force: bool = False) -> Lines:
        if self._sync is not None:
            loaded = {entry.model for entry in self._sync.ps()}
            busy = [ref for ref in refs if self._loaded_name(ref, loaded)]
            if busy and not force:
                raise ModelInUse(
                    f"{', '.join(busy)} is loaded; unload it first (`%model unload {busy[0]}`) or remove with -f."
                )
            if busy:
                self._sync.unload([self._loaded_name(ref, loaded) or ref for ref in busy])
        removal = self.store.remove(refs, force=force)
        return [f"Untagged: {name}" for name in removal.untagged] + [f"Deleted: {mid}" for mid in removal.deleted]

    def _loaded_name(self, ref: str, loaded: set[str]) -> str | None:
        if ref in loaded:
            return ref
        try:
            record = self.store.get(ref)
        except (MrNotebookError, ValueError):  # a name the store refuses is not loaded either
            return None
        return next((name for name in loaded if name in record.tags), None)

    def prune(self) -> dict[str, int]:
        return self.store.prune()

    def purge(self) -> dict[str, int]:
        if self._sync is not None:
            self._sync.unload(None)
        return self.store.purge()

    def df(self) -> dict[str, int]:
        return self.store.df()

    def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        given = {"context_size": context_size, "keep_alive": keep_alive, "threads": threads, "parallel": parallel}
        settings = {k: v for k, v in given.items() if v is not None}
        return self.store.configure(ref, **settings).to_json()

    # ------------------------------------------------------------------ engine verbs
    def ps(self) -> Rows:
        if self._sync is None:
            return []
        return [entry.to_json() for entry in self._sync.ps()]

    def load(self, ref: str, *, keep_alive: float | None = None) -> dict[str, Any]:
        self.store.get(ref)  # a clear ModelNotFound before any worker starts
        return dict(self.runner.load(ref, keep_alive=keep_alive).to_json())

    def unload(self, refs: Sequence[str] | None = None) -> int:
        if self._sync is None:
            return 0
        return int(self._sync.unload(list(refs) if refs is not None else None))

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "source": self.source,
            "url": self.url,
            "running": True,
            "store": str(self.store.home),
            "pid": os.getpid(),
            "loaded": len(self.ps()),
        }

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> ChatStream:
        from mr_notebook.engine import GenerationParams

        generation = GenerationParams.from_request(params)
        sync = self.runner
        stream = ChatStream(model)
        split = self._reasoning(model, params, stream._emit)

        async def produce() -> None:
            agen = sync.runner.chat(model, messages, generation)
            try:
                async for chunk in agen:
                    if chunk.text or chunk.logprobs:
                        split.emit(chunk.text, chunk.logprobs)
                    if chunk.finish_reason is not None or chunk.usage is not None:
                        split.end()
                        usage = chunk.usage.to_json() if chunk.usage is not None else None
                        stream._finish(chunk.finish_reason, usage)
                        return
                split.end()
                stream._finish(None, None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer thread, which raises it
                stream._fail(exc)
            finally:
                # Closing the generator is what tells the worker to stop generating.
                await agen.aclose()  # type: ignore[attr-defined]

        future = asyncio.run_coroutine_threadsafe(produce(), sync.loop)

        def cancel() -> None:
            future.cancel()  # cancels the task on the engine's loop: the generator closes, the worker stops

        stream._set_canceller(cancel)
        return stream

    def chat_choices(self, model: str, messages: Messages, n: int, **params: Any) -> Streams:
        from mr_notebook.engine import GenerationParams

        generation = GenerationParams.from_request({**params, "n": n})
        sync = self.runner
        choices = Choices(model, n)
        splits = [self._reasoning(model, params, functools.partial(choices.emit, i)) for i in range(n)]

        async def produce() -> None:
            agen = sync.runner.chat(model, messages, generation)
            usage = None
            try:
                async for chunk in agen:
                    if (chunk.text or chunk.logprobs) and 0 <= chunk.index < n:
                        splits[chunk.index].emit(chunk.text, chunk.logprobs)
                    choices.choice_done(chunk.index, chunk.finish_reason)
                    if chunk.usage is not None:
                        usage = chunk.usage.to_json()
                for split in splits:
                    split.end()
                choices.finish(usage)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # handed to the consumer threads, which raise it
                choices.fail(exc)
            finally:
                await agen.aclose()  # type: ignore[attr-defined]

        future = asyncio.run_coroutine_threadsafe(produce(), sync.loop)

        def cancel() -> None:
            future.cancel()

        choices.set_canceller(cancel)
        return choices.streams

    def _reasoning(self, model: str, params: Mapping[str, Any], sink: _Sink) -> _Reasoning:
        """What splits ``<think>`` blocks out of this model's replies, as the HTTP API does for its clients
        (``reasoning_content``), unless the request asks for the raw text (``reasoning_format: "none"``)."""
        from mr_notebook.api import tools

        if params.get("reasoning_format") == "none":
            return _Reasoning(sink, None)
        if self.runner.runner.remote.resolve(model) is not None:
            # A remote engine's reasoning comes back as <think> text (engine/remote/proxy.py).
            return _Reasoning(sink, tools.Splitter(family=None))
        from mr_notebook.api.turns import template_of

        record = self.store.get(model)
        key = (record.id, str(record.settings.get("chat_template") or ""))
        traits = self._thinks.get(key)
        if traits is None:  # the template is read from the file's header: once per model
            template = template_of(self.store, record)
            traits = self._thinks[key] = (tools.template_thinks(template), tools.template_opens_think(template))
        thinks, opens = traits
        return _Reasoning(sink, tools.Splitter(family=None, think_open=opens) if thinks else None)

    def embed(self, model: str, inputs: Lines) -> Vectors:
        result = self.runner.embed(model, inputs)
        return [list(vector) for vector in result.vectors]


#: Where a reply's pieces go: ``ChatStream._emit`` or one choice's ``Choices.emit`` (text, logprobs, reasoning).
_Sink = Callable[[str, "list[dict[str, Any]] | None", str], None]


class _Reasoning:
    """Sends a reply's text to its stream, reasoning (``<think>`` blocks) apart from the answer."""

    def __init__(self, sink: _Sink, splitter: Any) -> None:
        self.sink, self.splitter = sink, splitter

    def emit(self, text: str, logprobs: list[dict[str, Any]] | None) -> None:
        if self.splitter is None or not text:
            self.sink(text, logprobs, "")
            return
        pieces = self.splitter.feed(text)
        if not pieces:
            self.sink("", logprobs, "")  # held back (a partial marker); the logprobs still belong to the reply
        for number, (kind, piece) in enumerate(pieces):
            self._piece(kind, piece, logprobs if number == 0 else None)

    def end(self) -> None:
        """What the splitter held back (an unclosed ``<think>`` block, a partial marker)."""
        if self.splitter is not None:
            pieces, _calls = self.splitter.finish()
            for kind, piece in pieces:
                self._piece(kind, piece, None)

    def _piece(self, kind: str, piece: str, logprobs: list[dict[str, Any]] | None) -> None:
        if kind == "content":
            self.sink(piece, logprobs, "")
        else:
            self.sink("", logprobs, piece)
