"""The Runner: loads models on demand into worker processes and routes requests to them.

One per host process, created by the host and passed on. Everything here runs on the host's event loop;
the only blocking work is tiny store reads (an index and a manifest) and ``psutil`` queries.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from array import array
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from mr_notebook.engine import memory
from mr_notebook.engine.handle import WorkerHandle
from mr_notebook.engine.params import GenerationParams, normalize_messages
from mr_notebook.engine.remote import RemoteEngines
from mr_notebook.engine.results import Chunk, EmbeddingResult, ModelStatus, Usage
from mr_notebook.errors import InsufficientMemory, InvalidRequest, ModelNotFound, QueueFull
from mr_notebook.settings import EngineSettings, parse_duration
from mr_notebook.store import CHAT_TEMPLATE_MEDIA_TYPE, ModelRecord, Store, format_bytes

log = logging.getLogger(__name__)

#: Sequences a model's worker runs at once (llama-server's -np, Ollama's OLLAMA_NUM_PARALLEL default is 4 too).
DEFAULT_PARALLEL = 4

#: Inputs per embeddings request (OpenAI's limit too); each becomes one message from the worker.
MAX_EMBED_INPUTS = 2048


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


class Runner:
    """Loaded models (one worker process each), keep-alive timers and the memory budget."""

    def __init__(
        self, store: Store, settings: EngineSettings | None = None, engines: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self.store = store
        self.settings = settings if settings is not None else EngineSettings.from_env()
        #: Remote engines (the store's engines.json plus ``engines``): models named ENGINE/<id> run there.
        self.remote = RemoteEngines(store.home, engines)
        self._handles: dict[str, WorkerHandle] = {}
        self._load_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._loading: dict[str, asyncio.Future[WorkerHandle]] = {}

    async def start(self) -> None:
        """Bind to the running loop (idempotent; every operation calls it)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._load_lock = asyncio.Lock()

    async def close(self) -> None:
        """End every worker process (loads in progress included)."""
        for loading in list(self._loading.values()):
            loading.cancel()
        await asyncio.gather(*self._loading.values(), return_exceptions=True)
        await asyncio.gather(*(self._shutdown(h) for h in list(self._handles.values())))
        for task in list(self._background):
            await task
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
        self, model: str, *, keep_alive: float | None = None, context_size: int | None = None
    ) -> ModelStatus:
        """Preload a model (its keep_alive timer starts at once); a remote model is only looked up.

        ``context_size`` (Ollama's ``num_ctx``): a model loaded with another context is reloaded with this one
        once its running requests have finished, as Ollama does.
        """
        remote = self.remote.resolve(model)
        if remote is not None:
            now = time.time()
            engine = remote[0]
            return ModelStatus(model, f"remote:{engine.name}", 0, 0, 0, 0.0, None, now, now, engine.in_flight, 0)
        handle = await self._acquire(model, keep_alive, queued=False, context_size=context_size)
        self._release(handle)
        return self._status(handle)

    async def unload(self, models: list[str] | None = None) -> int:
        """End the workers of ``models`` (None: all); returns how many were running."""
        await self.start()
        if models is None:
            chosen = [h for h in self._handles.values() if h.alive]
        else:
            ids = set()
            for name in models:
                try:
                    ids.add(self.store.get(name).id)
                except ModelNotFound:
                    ids.add(name)  # removed from the store since it was loaded: match by the name asked
            chosen = [h for h in self._handles.values() if h.alive and (h.id in ids or h.name in ids)]
        await asyncio.gather(*(self._shutdown(h) for h in chosen))
        return len(chosen)

    def _local_only(self, model: str, what: str) -> None:
        remote = self.remote.resolve(model)
        if remote is not None:
            raise InvalidRequest(
                f"Model {model} runs on the remote engine {remote[0].name}, whose OpenAI API has no {what}; "
                "use a local model for it.",
                "model",
            )

    def ps(self) -> list[ModelStatus]:
        """Loaded models, most recently used first."""
        alive = [h for h in self._handles.values() if h.alive]
        return [self._status(h) for h in sorted(alive, key=lambda h: -h.last_used)]

    def queue_depth(self) -> dict[str, int]:
        return {h.name: h.queued for h in self._handles.values() if h.alive}

    def sequences(self) -> dict[str, dict[str, float]]:
        """Per loaded model: sequences decoding, requests waiting for a slot, recent batch fill (0 to 1)."""
        return {
            h.name: {
                "active": float(len(h.running)),
                "queued": float(h.queued),
                "batch_fill": float(h.stats.get("batch_fill", 0.0)) if h.running else 0.0,
            }
            for h in self._handles.values()
            if h.alive
        }

    # ------------------------------------------------------------------ loading and lifecycle

    def _status(self, handle: WorkerHandle) -> ModelStatus:
        return ModelStatus(
            model=handle.name,
            id=handle.id,
            pid=handle.pid,
            memory=memory.rss(handle.pid),
            context_size=handle.n_ctx,
            keep_alive=handle.keep_alive,
            expires_at=handle.expires_at if handle.active == 0 else None,
            loaded_at=handle.loaded_at,
            last_used=handle.last_used,
            in_flight=len(handle.running),
            queued=handle.queued,
            threads=handle.threads,
            parallel=handle.parallel,
            batch_fill=float(handle.stats.get("batch_fill", 0.0)) if handle.running else 0.0,
        )

    def _keep_alive(self, record: ModelRecord, requested: float | None) -> float:
        configured = record.settings.get("keep_alive")
        if configured is not None:
            return parse_duration(configured)
        return self.settings.keep_alive if requested is None else requested

    async def _acquire(
        self, model: str, keep_alive: float | None, *, queued: bool, context_size: int | None = None
    ) -> WorkerHandle:
        """The model's running worker (loading it if needed), with this request counted on it."""
        await self.start()
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model must be a model name such as ai/smollm2.", "model")
        record = self.store.get(model)
        handle = self._handles.get(record.id)
        if handle is not None and handle.alive and context_size and handle.config.get("n_ctx") != context_size:
            await self._retire(handle)
        if handle is None or not handle.alive:
            handle = await self._load(model, record, context_size)
        if queued and handle.queued >= self.settings.max_queue:
            raise QueueFull(
                f"{handle.queued} requests are already waiting for model {handle.name} "
                f"(limit {self.settings.max_queue}); retry in a moment."
            )
        # No await between the load and this count, so the model cannot be evicted in between.
        handle.active += 1
        handle.keep_alive = self._keep_alive(record, keep_alive)
        handle.expires_at = None
        if handle.timer is not None:
            handle.timer.cancel()
            handle.timer = None
        return handle

    async def _retire(self, handle: WorkerHandle) -> None:
        """End a worker once its requests have finished (a reload must not cut other clients' answers)."""
        deadline = time.monotonic() + self.settings.load_timeout
        while handle.active > 0 and handle.alive:
            if time.monotonic() > deadline:
                raise QueueFull(
                    f"Model {handle.name} is still busy, so it cannot be reloaded with another context size yet; "
                    "retry in a moment, or send the request without a context size."
                )
            await asyncio.sleep(0.05)
        await self._shutdown(handle)

    def _release(self, handle: WorkerHandle) -> None:
        handle.active -= 1
        handle.last_used = time.time()
        self._arm(handle)

    def _arm(self, handle: WorkerHandle, grace: float = 0.0) -> None:
        """Start an idle model's keep-alive timer (keep_alive 0: end it after ``grace`` seconds)."""
        if handle.active > 0 or not handle.alive or self._loop is None or handle.timer is not None:
            return
        if handle.keep_alive == 0 and grace == 0:
            self._in_background(self._shutdown(handle))
        elif handle.keep_alive == 0:
            handle.timer = self._loop.call_later(grace, self._expire, handle)
        elif handle.keep_alive > 0:
            handle.expires_at = handle.last_used + handle.keep_alive
            handle.timer = self._loop.call_later(handle.keep_alive, self._expire, handle)

    def _expire(self, handle: WorkerHandle) -> None:
        handle.timer = None
        if handle.active == 0 and handle.alive:
            self._in_background(self._shutdown(handle))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shutdown(self, handle: WorkerHandle) -> None:
        await handle.close()
        self._forget(handle)

    def _forget(self, handle: WorkerHandle) -> None:
        if self._handles.get(handle.id) is handle:
            del self._handles[handle.id]

    def _config(self, name: str, record: ModelRecord, n_ctx: int) -> dict[str, Any]:
        template = record.settings.get("chat_template")
        template_files = self.store.paths(record, CHAT_TEMPLATE_MEDIA_TYPE)
        if not template and template_files:
            template = template_files[0].read_text(encoding="utf-8")
        return {
            "name": name,
            # Part 1 of a split model sits beside the other parts under llama.cpp's names: it loads them all.
            "path": str(self.store.model_file(record)),
            "n_ctx": n_ctx,
            "chat_template": template or None,
            "gpu_layers": record.settings.get("gpu_layers"),
            "threads": int(record.settings.get("threads") or self.settings.threads or 0) or memory.default_threads(),
            "parallel": self._parallel(record),
            "pooling": record.hints.get("pooling"),
            "context_length": record.hints.get("context_length"),
        }

    def _parallel(self, record: ModelRecord) -> int:
        return int(record.settings.get("parallel") or self.settings.parallel or DEFAULT_PARALLEL)

    async def _load(self, name: str, record: ModelRecord, context_size: int | None = None) -> WorkerHandle:
        """Load a model once for every request that wants it; a requester that goes away does not stop it.

        A client timing out during a long load would otherwise cancel it, and the next attempt start over.
        The load belongs to the Runner (``close`` cancels it, which ends its process).
        """
        loading = self._loading.get(record.id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_now(name, record, context_size))
            self._loading[record.id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(record.id, None))
        return await asyncio.shield(loading)

    async def _load_now(self, name: str, record: ModelRecord, context_size: int | None = None) -> WorkerHandle:
        if self._load_lock is None:
            raise RuntimeError("Runner.start() was not awaited")
        async with self._load_lock:  # one load decision at a time keeps the memory accounting honest
            handle = self._handles.get(record.id)
            if handle is not None and handle.alive:
                return handle
            n_ctx = context_size or memory.context_size(record.settings, record.hints)
            need = memory.estimate(record.hints, n_ctx, self._parallel(record))
            await self._make_room(name, need)
            handle = WorkerHandle(
                name,
                record.id,
                self._config(name, record, n_ctx),
                need,
                self.settings.keep_alive,
                self._forget,
                dict(self.settings.extra_env),
            )
            await handle.start(self.settings.load_timeout)
            self._handles[record.id] = handle
            log.info("loaded %s in worker %s (context %s)", name, handle.pid, handle.n_ctx)
            # Its keep-alive runs until a request takes it (the one that asked may have gone away meanwhile).
            self._arm(handle, grace=1.0)
            return handle

    async def _make_room(self, name: str, need: memory.Estimate) -> None:
        """Evict idle models, least recently used first, until ``need`` fits; else InsufficientMemory."""
        while True:
            live = [h for h in self._handles.values() if h.alive]
            room = memory.available(self.settings, sum(h.estimate.total for h in live))
            too_many = len(live) >= self.settings.max_models
            if not too_many and need.total <= room:
                return
            idle = sorted((h for h in live if h.active == 0), key=lambda h: h.last_used)
            if idle:
                log.info("unloading idle model %s to make room for %s", idle[0].name, name)
                await self._shutdown(idle[0])
                continue
            busy = f" ({len(live)} loaded model(s) are busy and cannot be unloaded now)" if live else ""
            if too_many:
                raise InsufficientMemory(
                    f"Model {name} cannot load: {len(live)} models are loaded and busy (max_models="
                    f"{self.settings.max_models}). Wait for them to finish, unload one (`mr-notebook unload "
                    "NAME`), or raise MR_NOTEBOOK_MAX_MODELS."
                )
            budget = (
                f"the memory budget of {format_bytes(self.settings.memory_budget)}"
                if self.settings.memory_budget is not None
                else "the memory budget (a share of free memory)"
            )
            raise InsufficientMemory(
                f"Model {name} needs about {need.describe()} but only {format_bytes(room)} of {budget} is "
                f"available{busy}. Use a smaller context (`mr-notebook configure {name} --context-size 2048`), "
                "a smaller quantization, unload other models (`mr-notebook unload --all`), or raise "
                "MR_NOTEBOOK_MEMORY_BUDGET."
            )
