"""A synchronous facade over a Runner, for code with no event loop (in-kernel mode, the CLI)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from mr_notebook.engine.params import GenerationParams
from mr_notebook.engine.results import Chunk, EmbeddingResult, ModelStatus
from mr_notebook.engine.runner import Runner
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store

T = TypeVar("T")


async def _next(stream: AsyncIterator[Chunk]) -> Chunk:
    return await stream.__anext__()


async def _close(stream: AsyncIterator[Chunk]) -> None:
    try:
        await stream.aclose()  # type: ignore[attr-defined]
    except RuntimeError:
        pass  # still running: the cancellation already sent ends it and its cleanup cancels the request


class LoopThread:
    """A private event loop in a daemon thread, for blocking callers of async engine code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run any coroutine on the loop and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: stop the work on the loop too
            raise

    def _stop(self, last: Coroutine[Any, Any, None]) -> None:
        """Run ``last`` (closing what lives on the loop), then end the loop thread (idempotent)."""
        if self.loop.is_closed():
            last.close()
            return
        self.call(last)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class SyncRunner(LoopThread):
    """Owns a Runner on a private event loop in a daemon thread."""

    def __init__(self, store: Store, settings: EngineSettings | None = None) -> None:
        super().__init__("mr-notebook-engine")
        self.runner = Runner(store, settings)
        self.call(self.runner.start())

    def _iterate(self, stream: AsyncIterator[Chunk]) -> Iterator[Chunk]:
        try:
            while True:
                future = asyncio.run_coroutine_threadsafe(_next(stream), self.loop)
                try:
                    chunk = future.result()
                except StopAsyncIteration:
                    return
                except BaseException:
                    future.cancel()
                    raise
                yield chunk
        finally:
            closing = asyncio.run_coroutine_threadsafe(_close(stream), self.loop)
            try:
                closing.result(timeout=10)
            except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
                pass

    def chat(self, model: str, messages: list[dict[str, Any]], params: GenerationParams) -> Iterator[Chunk]:
        """Stream a chat completion; closing the iterator cancels the generation."""
        return self._iterate(self.runner.chat(model, messages, params))

    def complete(self, model: str, prompt: str, params: GenerationParams) -> Iterator[Chunk]:
        return self._iterate(self.runner.complete(model, prompt, params))

    def embed(self, model: str, inputs: list[str]) -> EmbeddingResult:
        return self.call(self.runner.embed(model, inputs))

    def tokenize(self, model: str, text: str) -> list[int]:
        return self.call(self.runner.tokenize(model, text))

    def detokenize(self, model: str, tokens: list[int]) -> str:
        return self.call(self.runner.detokenize(model, tokens))

    def load(self, model: str, *, keep_alive: float | None = None) -> ModelStatus:
        return self.call(self.runner.load(model, keep_alive=keep_alive))

    def unload(self, models: list[str] | None = None) -> int:
        return self.call(self.runner.unload(models))

    def ps(self) -> list[ModelStatus]:
        async def ps() -> list[ModelStatus]:
            return self.runner.ps()

        return self.call(ps())

    def queue_depth(self) -> dict[str, int]:
        async def depth() -> dict[str, int]:
            return self.runner.queue_depth()

        return self.call(depth())

    def close(self) -> None:
        """End every worker and the loop thread."""
        self._stop(self.runner.close())
