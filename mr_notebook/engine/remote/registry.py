"""The remote engines a Runner knows: ``engines.json`` of its store plus those its host configures.

A model called ``NAME/<id>`` where NAME is an engine runs on that engine as ``<id>``. The Runner asks
:meth:`RemoteEngines.resolve` first, so every route (OpenAI, Ollama, Anthropic, the magics) reaches remote
models through the same calls as local ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from mr_notebook.engine.params import GenerationParams, normalize_messages
from mr_notebook.engine.remote import proxy
from mr_notebook.engine.remote.client import RemoteEngine
from mr_notebook.engine.remote.config import EngineSpec, config_path, load_specs
from mr_notebook.engine.results import Chunk, EmbeddingResult
from mr_notebook.errors import InvalidRequest, MrNotebookError, RemoteEngineError

log = logging.getLogger(__name__)

#: Model lists younger than this are listed as they are; older ones are asked again (on demand only).
LIST_MAX_AGE = 10.0
#: A model list from a slow engine is given up after this many seconds (the stale list is shown).
LIST_TIMEOUT = 5.0


#: Every live registry of this process: lets a route ask "is this path segment an engine?" without a Runner.
_LIVE: weakref.WeakSet[RemoteEngines] = weakref.WeakSet()


def is_engine_name(name: str | None) -> bool:
    """Whether ``name`` is an engine of any Runner in this process (for ``/engines/{NAME}/v1/…``)."""
    return bool(name) and any(registry.is_engine(name) for registry in list(_LIVE))


class RemoteEngines:
    """Engines by name; the stored file is re-read when it changes (``engine add`` while serving)."""

    def __init__(self, home: Path, configured: Iterable[Mapping[str, Any]] = ()) -> None:
        self.home = home
        self._configured = [EngineSpec.parse(item) for item in configured]
        self._engines: dict[str, RemoteEngine] = {}
        self._stamp: tuple[int, int] | None = None
        self._loaded = False
        #: Why engines.json could not be used (None when it could, or does not exist).
        self.problem: str | None = None
        #: Keys taken out of this process's environment by :meth:`hide_keys` (name of variable → key).
        self._keys: dict[str, str] = {}
        self._retired: list[RemoteEngine] = []
        _LIVE.add(self)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = config_path(self.home).stat()
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size)

    def engines(self) -> dict[str, RemoteEngine]:
        """The current engines (one stat per call; the file is parsed again only when it changed)."""
        stamp = self._file_stamp()
        if not self._loaded or stamp != self._stamp:
            try:
                stored = load_specs(self.home)
                self.problem = None
            except MrNotebookError as exc:
                # A broken engines.json must not stop the local models: serve without its engines, say why.
                log.warning("remote engines not loaded: %s", exc)
                stored, self.problem = [], str(exc)
            specs = {s.name: s for s in (*stored, *self._configured)}
            engines = {}
            for name, spec in specs.items():
                old = self._engines.get(name)
                # Keep a running engine (its client, counters, models) unless its spec changed.
                engines[name] = old if old is not None and old.spec == spec else RemoteEngine(spec, self._keys)
            # Engines removed or changed finish what they serve, then their clients close (in close() at the latest).
            self._retired += [e for e in self._engines.values() if engines.get(e.name) is not e]
            self._engines, self._stamp, self._loaded = engines, stamp, True
        return self._engines

    def resolve(self, model: Any) -> tuple[RemoteEngine, str] | None:
        """(engine, remote model id) for ``NAME/<id>``; None for a local model."""
        if not isinstance(model, str) or "/" not in model:
            return None
        name, _, remote_id = model.partition("/")
        engine = self.engines().get(name) if name else None
        if engine is None:
            return None
        if not remote_id:
            raise InvalidRequest(f"Name a model of engine {name}: {name}/<model id> (see /v1/models).", "model")
        return engine, remote_id

    def refuse(self, names: Iterable[str], verb: str) -> None:
        """Raise for a remote model: ``rm``/``configure`` act on our store, and these models are not in it."""
        for name in names:
            found = self.resolve(name)
            if found is not None:
                engine = found[0]
                raise InvalidRequest(
                    f"{name} is served by the remote engine {engine.name} ({engine.spec.url}), not stored here, "
                    f"so `{verb}` does not apply to it: manage the model on that engine, or stop using the engine "
                    f"with `mr-notebook engine rm {engine.name}`.",
                    "model",
                )

    def describe(self, model: str) -> dict[str, Any] | None:
        """``inspect`` of a remote model (None for a local one): no digest to pin, so the id names the engine."""
        found = self.resolve(model)
        if found is None:
            return None
        engine, remote_id = found
        return {
            "id": f"remote:{engine.name}/{remote_id}",
            "tags": [f"{engine.name}/{remote_id}"],
            "created": 0,
            "config": {"engine": engine.name, "url": engine.spec.url, "kind": engine.spec.kind, "remote_id": remote_id},
            # Requests the engine takes at once from us: what batch helpers (map, %%chat -n) may send together.
            "settings": {"parallel": engine.spec.max_concurrency},
        }

    def hide_keys(self) -> list[str]:
        """Move the engines' key variables out of ``os.environ`` into this registry.

        Jupyter's kernels inherit the server's environment; taking the keys out keeps them in the server only
        (a kernel reaches the engine through our endpoint with the server's token). Returns the names moved.
        """
        moved = []
        for engine in self.engines().values():
            name = engine.spec.api_key_env
            if name and name in os.environ:
                self._keys[name] = os.environ.pop(name)
                moved.append(name)
        return moved

    def is_engine(self, name: str | None) -> bool:
        return bool(name) and name in self.engines()

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in (*self._engines.values(), *self._retired)))
        self._retired.clear()

    # ---------------------------------------------------------------- models and status

    async def models(self, *, refresh: bool = False) -> list[tuple[RemoteEngine, str]]:
        """(engine, remote id) of every remote model, asking engines whose list is stale (in parallel)."""
        engines = list(self.engines().values())
        idle = [e for e in self._retired if e.in_flight == 0 and e.waiting == 0]
        self._retired = [e for e in self._retired if e not in idle]
        await asyncio.gather(*(e.close() for e in idle))
        now = time.time()
        stale = [e for e in engines if refresh or e.models_at is None or now - e.models_at > LIST_MAX_AGE]

        async def ask(engine: RemoteEngine) -> None:
            try:
                await asyncio.wait_for(engine.refresh(), LIST_TIMEOUT)
            except (RemoteEngineError, TimeoutError) as exc:
                engine.healthy, engine.last_error = False, str(exc) or f"no model list within {LIST_TIMEOUT:g} s"
                engine.models_at = time.time()  # do not ask a dead engine on every listing
                log.warning("engine %s: %s", engine.name, engine.last_error)

        await asyncio.gather(*(ask(e) for e in stale))
        return [(e, model) for e in engines for model in e.models]

    def status(self) -> list[dict[str, Any]]:
        return [e.status() for e in self.engines().values()]

    # ---------------------------------------------------------------- operations

    async def chat(
        self, engine: RemoteEngine, model: str, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        body = {
            "model": model,
            "messages": proxy.openai_messages(normalize_messages(messages)),
            "stream_options": {"include_usage": True},
            **proxy.request_params(params),
        }
        events = engine.stream("chat/completions", body)
        async for chunk in proxy.chunks(events, params.n, chat=True, engine=engine.name):
            yield chunk

    async def complete(
        self, engine: RemoteEngine, model: str, prompt: str | list[int], params: GenerationParams
    ) -> AsyncIterator[Chunk]:
        body = {"model": model, "prompt": prompt, "stream_options": {"include_usage": True}}
        body.update({k: v for k, v in proxy.request_params(params).items() if k not in ("tools", "tool_choice")})
        async for chunk in proxy.chunks(engine.stream("completions", body), params.n, chat=False, engine=engine.name):
            yield chunk

    async def embed(self, engine: RemoteEngine, model: str, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        data = await engine.post_json("embeddings", {"model": model, "input": inputs})
        items = data.get("data") if isinstance(data, dict) else None
        vectors: list[list[float]] = [[] for _ in inputs]
        for position, item in enumerate(items if isinstance(items, list) else []):
            if not isinstance(item, dict) or not isinstance(item.get("embedding"), list):
                raise RemoteEngineError(f"Engine {engine.name} sent embeddings in an unknown shape.")
            index = item.get("index", position)
            if isinstance(index, int) and 0 <= index < len(vectors):
                vectors[index] = [float(v) for v in item["embedding"]]
        if any(not v for v in vectors):
            count = len(items) if isinstance(items, list) else 0
            raise RemoteEngineError(f"Engine {engine.name} sent {count} embeddings for {len(inputs)} inputs.")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return EmbeddingResult(vectors=vectors, prompt_tokens=int(usage.get("prompt_tokens") or 0))


def prometheus_text(status: list[dict[str, Any]]) -> bytes:
    """Gauges of each engine (up, latency, in flight, waiting, requests, failures) in Prometheus' text form.

    A fresh registry per scrape: engines come and go with ``engine add``/``rm``, and stale series must not stay.
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry(auto_describe=True)
    gauges = {
        "healthy": Gauge(
            "mr_notebook_engine_up", "1 when the remote engine answered last time", ["engine"], registry=registry
        ),
        "latency": Gauge(
            "mr_notebook_engine_latency_seconds",
            "Time to the first byte of the last answer",
            ["engine"],
            registry=registry,
        ),
        "in_flight": Gauge(
            "mr_notebook_engine_in_flight", "Requests running on the engine", ["engine"], registry=registry
        ),
        "waiting": Gauge("mr_notebook_engine_waiting", "Requests waiting for a slot", ["engine"], registry=registry),
        "requests": Gauge("mr_notebook_engine_requests", "Requests sent since start", ["engine"], registry=registry),
        "failures": Gauge("mr_notebook_engine_failures", "Failed requests since start", ["engine"], registry=registry),
    }
    for engine in status:
        for key, gauge in gauges.items():
            value = engine.get(key)
            if value is not None:
                gauge.labels(engine["name"]).set(float(value))
    return generate_latest(registry)
