"""The Runner: routes requests (chat, completions, embeddings, tokens) to models, loading them on demand.

One per host process, created by the host and passed on; it runs on the host's event loop. Local models run in
the worker pool (:mod:`.pool`: loading, keep-alive, memory budget); models named ``ENGINE/<id>`` on remote
engines. Store reads run in threads; what stays on the loop are ``psutil`` queries and a stat of engines.json.
"""

from __future__ import annotations

import base64
import logging
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from mr_notebook.engine.handle import WorkerHandle
from mr_notebook.engine.params import GenerationParams, normalize_messages
from mr_notebook.engine.pool import DEFAULT_PARALLEL, WorkerPool
from mr_notebook.engine.remote import RemoteEngines
from mr_notebook.engine.results import Chunk, EmbeddingResult, ModelStatus, Usage
from mr_notebook.errors import InvalidRequest
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.store.pull.common import PullProgress

log = logging.getLogger(__name__)

#: Inputs per embeddings request (OpenAI's limit too); each becomes one message from the worker.
MAX_EMBED_INPUTS = 2048

__all__ = ["DEFAULT_PARALLEL", "MAX_EMBED_INPUTS", "Runner", "check_tokens"]


def _is_input(item: Any) -> bool:
    if isinstance(item, str):
        return bool(item)
    return isinstance(item, list) and bool(item) and all(isinstance(t, int) and not isinstance(t, bool) for t in item)


def check_tokens(handle: WorkerHandle, tokens: list[int], param: str) -> None:
    """Ids outside the vocabulary make llama.cpp abort the worker: refuse them here (the worker checks too)."""
    bad = next((t for t in tokens if not 0 <= t < handle.n_vocab), None) if handle.n_vocab else None
    if bad is not None:
        raise InvalidRequest(
            f"{param} holds token id {bad}, but this model's vocabulary has ids 0 to {handle.n_vocab - 1}. "
            "Send token ids made by this model's tokenizer, or send text.",
            param,
        )


class Runner(WorkerPool):
    """What the API asks of models: chat, completions, embeddings, tokens, load; local workers or remote engines."""

    def __init__(
        self, store: Store, settings: EngineSettings | None = None, engines: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(store, settings)
        #: Remote engines (the store's engines.json plus ``engines``): models named ENGINE/<id> run there.
        self.remote = RemoteEngines(store.home, engines)

    async def close(self) -> None:
        """End every worker process (loads in progress included) and the remote engines' clients."""
        await super().close()
        await self.remote.close()

    # ------------------------------------------------------------------ operations

    async def chat(self, model: str, messages: list[dict[str, Any]], params: GenerationParams) -> AsyncIterator[Chunk]:
        """Stream a chat completion; errors before the first token raise from the first ``__anext__``."""
        remote = self.remote.resolve(model)
        if remote is not None:
            async for chunk in self.remote.chat(*remote, messages, params):
                yield chunk
            return
        payload = {"messages": normalize_messages(messages), "params": params.to_wire()}
        async for chunk in self._generate("chat", model, payload, params):
            yield chunk

    async def complete(self, model: str, prompt: str | list[int], params: GenerationParams) -> AsyncIterator[Chunk]:
        """Stream a text completion of ``prompt`` (text, or token ids of this model's vocabulary)."""
        if not isinstance(prompt, str) and not (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
        ):
            raise InvalidRequest("prompt must be a string or a non-empty list of token ids.", "prompt")
        remote = self.remote.resolve(model)
        if remote is not None:
            async for chunk in self.remote.complete(*remote, prompt, params):
                yield chunk
            return
        async for chunk in self._generate("complete", model, {"prompt": prompt, "params": params.to_wire()}, params):
            yield chunk

    async def _generate(
        self, op: str, model: str, payload: dict[str, Any], params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        handle = await self._acquire(model, params.keep_alive, queued=True)
        pending = None
        try:
            if isinstance(payload.get("prompt"), list):
                check_tokens(handle, payload["prompt"], "prompt")
            pending = handle.submit(op, payload)
            while not pending.finished:
                message = await handle.receive(pending)
                kind = message["type"]
                if kind == "delta":
                    yield Chunk(
                        text=message["text"],
                        logprobs=message.get("logprobs"),
                        index=message.get("index", 0),
                        prompt_tokens=pending.prompt_tokens,
                    )
                elif kind == "finish":  # one of n > 1 choices ended
                    yield Chunk(index=int(message.get("index", 0)), finish_reason=message.get("finish_reason"))
                else:
                    usage = message.get("usage") or {}
                    yield Chunk(
                        finish_reason=message.get("finish_reason") if params.n == 1 else None,
                        usage=Usage(
                            int(usage.get("prompt_tokens", 0)),
                            int(usage.get("completion_tokens", 0)),
                            int(usage.get("cached_tokens", 0)),
                        ),
                        stop_sequence=message.get("stop_sequence"),
                        prompt_tokens=pending.prompt_tokens,
                    )
        finally:
            # Runs on aclose() and on task cancellation too: an unfinished request is cancelled in the worker.
            if pending is not None:
                handle.finish(pending)
            self._release(handle)

    async def embed(self, model: str, inputs: str | list[str] | list[list[int]]) -> EmbeddingResult:
        """One normalized vector per input: texts, or token-id lists of this model's vocabulary.

        Works for any model (the worker adds an embedding context); inputs are evaluated several per decode,
        and cancelling the caller stops the work before the next batch.
        """
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(_is_input(t) for t in inputs):
            raise InvalidRequest(
                "input must be a non-empty string, a list of non-empty strings, or a list of token-id lists.", "input"
            )
        if len(inputs) > MAX_EMBED_INPUTS:
            raise InvalidRequest(
                f"input has {len(inputs)} items but one request takes at most {MAX_EMBED_INPUTS}; send them in "
                "several requests.",
                "input",
            )
        remote = self.remote.resolve(model)
        if remote is not None:
            return await self.remote.embed(*remote, inputs)
        handle = await self._acquire(model, None, queued=True)
        pending = None
        try:
            for item in inputs:
                if isinstance(item, list):
                    check_tokens(handle, item, "input")
            pending = handle.submit("embed", {"inputs": inputs})
            vectors: list[list[float]] = [[] for _ in inputs]
            while True:
                message = await handle.receive(pending)
                if message["type"] == "vector":
                    index = int(message["index"])
                    if 0 <= index < len(vectors):
                        vectors[index] = array("f", base64.b64decode(message["b64"])).tolist()
                elif pending.finished:
                    return EmbeddingResult(vectors=vectors, prompt_tokens=int(message["prompt_tokens"]))
        finally:
            if pending is not None:
                handle.finish(pending)
            self._release(handle)

    async def tokenize(self, model: str, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InvalidRequest("text must be a string.", "text")
        self._local_only(model, "tokenize")
        handle = await self._acquire(model, None, queued=False)
        try:
            return list((await handle.call("tokenize", {"text": text}))["tokens"])
        finally:
            self._release(handle)

    async def detokenize(self, model: str, tokens: list[int]) -> str:
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise InvalidRequest("tokens must be a list of integers.", "tokens")
        self._local_only(model, "detokenize")
        handle = await self._acquire(model, None, queued=False)
        try:
            check_tokens(handle, tokens, "tokens")
            return str((await handle.call("detokenize", {"tokens": tokens}))["text"])
        finally:
            self._release(handle)

    async def load(
        self,
        model: str,
        *,
        keep_alive: float | None = None,
        context_size: int | None = None,
        progress: Callable[[PullProgress], None] | None = None,
    ) -> ModelStatus:
        """Preload a model (its keep_alive timer starts at once); a remote model is only looked up.

        ``context_size`` (Ollama's ``num_ctx``): a model loaded with another context is reloaded with this one
        once its running requests have finished, as Ollama does. ``progress`` hears "unloading" (evictions),
        "loading" and "loaded" events, on the loop.
        """
        remote = self.remote.resolve(model)
        if remote is not None:
            now = time.time()
            engine = remote[0]
            return ModelStatus(model, f"remote:{engine.name}", 0, 0, 0, 0.0, None, now, now, engine.in_flight, 0)
        return await self.load_local(model, keep_alive=keep_alive, context_size=context_size, progress=progress)

    def _local_only(self, model: str, what: str) -> None:
        remote = self.remote.resolve(model)
        if remote is not None:
            raise InvalidRequest(
                f"Model {model} runs on the remote engine {remote[0].name}, whose OpenAI API has no {what}; "
                "use a local model for it.",
                "model",
            )
