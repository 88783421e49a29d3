"""An engine in this process: a :class:`~mr_notebook.service.ModelService` (store + Runner + the product's rules)
on its own loop thread, whose workers are child processes of this process.

Every verb is one service call whose typed result is turned into the wire shape (``to_json()``, what the HTTP
routes send), so the in-process engine and a remote one answer alike. The Runner starts with the first verb that
needs a model; ``%load_ext`` and ``%model`` parsing import none of this.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

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
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store

if TYPE_CHECKING:
    from mr_notebook.engine import Runner
    from mr_notebook.service import ModelService, SyncService

log = logging.getLogger(__name__)

T = TypeVar("T")


class LocalEngine:
    """A ModelService in this process (no server, or ``%model serve``)."""

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
        self._sync: SyncService | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        #: (model id, configured template) → (template thinks, generation prompt opens <think>).
        self._thinks: dict[tuple[str, str], tuple[bool, bool]] = {}

    def __repr__(self) -> str:
        return f"<LocalEngine store={str(self.store.home)!r} url={self.url!r}>"

    # ------------------------------------------------------------------ service, server
    @property
    def service(self) -> SyncService:
        """The service on its loop thread, created on first use (imports the service, never llama_cpp)."""
        with self._lock:
            if self._sync is None:
                from mr_notebook.service import SyncService

                self._sync = SyncService(self.store, settings=self._settings, env=self._env, mode="local")
            return self._sync

    def _call(self, work: Callable[[ModelService], Coroutine[Any, Any, T]]) -> T:
        """``work(service)`` run on the service's loop; blocks until it answers (Ctrl-C cancels it there)."""
        sync = self.service
        return sync.call(work(sync.service))

    def _runner(self) -> Runner:
        return self._call(lambda service: service.ready_runner())

    @property
    def started(self) -> bool:
        """Whether some model was asked for (the Runner exists)."""
        return self._sync is not None and self._sync.service.runner is not None

    @property
    def url(self) -> str | None:
        return str(self._server.url) if self._server is not None else None

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Expose this engine over HTTP from its loop thread (``%model serve``): the same service, rules and
        workers answer the magics and the endpoint. Returns its URL."""
        sync = self.service
        with self._lock:
            if self._server is None:
                from mr_notebook.api.standalone import start_in_thread

                self._server = start_in_thread(sync, self.store, host, port)
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
        return [entry.to_json() for entry in self._call(lambda s: s.list())]

    def inspect(self, ref: str) -> dict[str, Any]:
        return self._call(lambda s: s.inspect(ref)).to_json()

    def pull(
        self, ref: str, progress: ProgressCallback | None = None, *, cancel: threading.Event | None = None
    ) -> PullSummary:
        result = self._call(lambda s: s.pull(ref, progress=progress, cancel=cancel))
        return PullSummary(result.record.to_json(), result.already_present, result.downloaded)

    def package(self, path: str, name: str, *, link: bool = True) -> dict[str, Any]:
        return self._call(lambda s: s.package(path, name, link=link)).to_json()

    def tag(self, source: str, target: str) -> dict[str, Any]:
        return self._call(lambda s: s.tag(source, target)).to_json()

    def rm(self, refs: Sequence[str], *, force: bool = False) -> Rows:
        return self._call(lambda s: s.rm(list(refs), force=force)).to_json()

    def prune(self) -> dict[str, int]:
        return self._call(lambda s: s.prune()).to_json()

    def purge(self, *, force: bool = False) -> dict[str, int]:
        return self._call(lambda s: s.purge(force=force)).to_json()

    def df(self) -> dict[str, int]:
        return self._call(lambda s: s.df()).to_json()

    def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | str | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        return self._call(
            lambda s: s.configure(
                ref, context_size=context_size, keep_alive=keep_alive, threads=threads, parallel=parallel
            )
        ).to_json()

    # ------------------------------------------------------------------ engine verbs
    def ps(self) -> Rows:
        if self._sync is None:  # nothing was ever loaded here: no need to start the service to say so
            return []
        return [row.to_json() for row in self._call(lambda s: s.ps())]

    def load(
        self, ref: str, *, keep_alive: float | str | None = None, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        return self._call(lambda s: s.load(ref, keep_alive=keep_alive, progress=progress)).to_json()

    def unload(self, refs: Sequence[str] | None = None) -> int:
        if self._sync is None:
            return 0
        return self._call(lambda s: s.unload(None if refs is None else list(refs)))

    def status(self) -> dict[str, Any]:
        status = self._call(lambda s: s.status()).to_json()
        return {
            **status,
            "serving": status.get("mode"),
            "mode": self.mode,
            "source": self.source,
            "url": self.url,
            "running": True,
            "pid": os.getpid(),
            "loaded": status.get("loaded_models", 0),
        }

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> ChatStream:
        from mr_notebook.engine import GenerationParams

        generation = GenerationParams.from_request(params)
        runner = self._runner()
        stream = ChatStream(model)
        split = self._reasoning(model, params, stream._emit)

        async def produce() -> None:
            agen = runner.chat(model, messages, generation)
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

        future = asyncio.run_coroutine_threadsafe(produce(), self.service.loop)

        def cancel() -> None:
            future.cancel()  # cancels the task on the engine's loop: the generator closes, the worker stops

        stream._set_canceller(cancel)
        return stream

    def chat_choices(self, model: str, messages: Messages, n: int, **params: Any) -> Streams:
        from mr_notebook.engine import GenerationParams

        generation = GenerationParams.from_request({**params, "n": n})
        runner = self._runner()
        choices = Choices(model, n)
        splits = [self._reasoning(model, params, functools.partial(choices.emit, i)) for i in range(n)]

        async def produce() -> None:
            agen = runner.chat(model, messages, generation)
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

        future = asyncio.run_coroutine_threadsafe(produce(), self.service.loop)

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
        if self._runner().remote.resolve(model) is not None:
            # A remote engine's reasoning comes back as <think> text (engine/remote/proxy.py).
            return _Reasoning(sink, tools.Splitter(family=None))
        from mr_notebook.api.turns import template_of
        from mr_notebook.errors import MrNotebookError

        try:
            record = self.store.get(model)
            key = (record.id, str(record.settings.get("chat_template") or ""))
            traits = self._thinks.get(key)
            if traits is None:  # the template is read from the file's header: once per model
                template = template_of(self.store, record)
                traits = self._thinks[key] = (tools.template_thinks(template), tools.template_opens_think(template))
        except MrNotebookError:
            return _Reasoning(sink, None)  # the engine says what is wrong (no such model …) on the first read
        thinks, opens = traits
        return _Reasoning(sink, tools.Splitter(family=None, think_open=opens) if thinks else None)

    def embed(self, model: str, inputs: Lines) -> Vectors:
        runner = self._runner()
        result = self.service.call(runner.embed(model, inputs))
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
