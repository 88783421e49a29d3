"""``mr-notebook engine …`` and ``%model engine …``: add, list and remove remote engines (text for both)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mr_notebook.engine.remote.config import EngineSpec, add_spec, remove_spec
from mr_notebook.engine.remote.registry import RemoteEngines
from mr_notebook.errors import InvalidRequest
from mr_notebook.tables import text_table

_T = TypeVar("_T")


def _run(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` to the end; on a thread of its own when this thread already runs a loop (a kernel does)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


async def _listing(home: Path, refresh: bool) -> tuple[RemoteEngines, list[tuple[str, str]]]:
    registry = RemoteEngines(home)
    registry.engines()  # reads the file (a problem is kept in registry.problem)
    try:
        found = await registry.models(refresh=refresh)
        return registry, [(engine.name, model) for engine, model in found]
    finally:
        await registry.close()


def remote_models(home: Path) -> list[dict[str, Any]]:
    """Remote models as ``list --json`` rows (asks each engine, at most a few seconds; none: no request)."""
    if not RemoteEngines(home).engines():
        return []
    _, found = _run(_listing(home, True))
    return [
        {"id": f"remote:{name}/{model}", "tags": [f"{name}/{model}"], "created": 0, "config": {"engine": name}}
        for name, model in found
    ]


def engine_command(
    home: Path,
    action: str,
    name: str | None,
    url: str | None,
    kind: str = "openai",
    api_key_env: str | None = None,
    **limits: Any,
) -> str:
    """Do ``action`` (add, ls, rm) and say what happened."""
    if action == "add":
        if not name or not url:
            raise InvalidRequest("Usage: engine add NAME URL [--kind openai|ollama|model-runner] [--api-key-env VAR]")
        given = {k: v for k, v in limits.items() if v is not None}  # max_concurrency, timeout
        spec = EngineSpec.parse({"name": name, "url": url, "kind": kind, "api_key_env": api_key_env, **given})
        from mr_notebook.store import Store

        hidden = sorted(t for r in Store(home).list() for t in r.tags if t.split("/", 1)[0] == spec.name)
        if hidden:
            raise InvalidRequest(
                f"Engine name {spec.name} would hide the stored model(s) {', '.join(hidden[:5])} (a model called "
                f"{spec.name}/… would go to the engine); choose another name.",
                "name",
            )
        add_spec(home, spec)
        return f"Engine {spec.name} added ({spec.url}); its models are {spec.name}/<model id> (`engine ls` lists them)."
    if action == "rm":
        if not name:
            raise InvalidRequest("Usage: engine rm NAME")
        remove_spec(home, name)
        return f"Engine {name} removed."
    if action != "ls":
        raise InvalidRequest(f"Unknown engine action {action!r}: use add, ls or rm.")
    registry, found = _run(_listing(home, True))
    table = engine_table(registry.status(), [f"{name}/{model}" for name, model in found])
    return f"{registry.problem}\n{table}" if registry.problem else table


def engine_table(statuses: list[dict[str, Any]], models: list[str]) -> str:
    """``engine ls``: each engine's address, health, latency and models (``models`` are NAME/<id>)."""
    rows = []
    for status in statuses:
        mine = [m for m in models if m.startswith(f"{status['name']}/")]
        health = "up" if status["healthy"] else f"down: {status['last_error']}" if status["last_error"] else "?"
        latency = f"{status['latency'] * 1000:.0f} ms" if status["latency"] is not None else ""
        rows.append(
            {
                "ENGINE": status["name"],
                "URL": status["url"],
                "KIND": status["kind"],
                "HEALTH": health[:80],
                "LATENCY": latency,
                "MODELS": ", ".join(mine[:20]) + (" …" if len(mine) > 20 else ""),
            }
        )
    return text_table(rows, ("ENGINE", "URL", "KIND", "HEALTH", "LATENCY", "MODELS"))
