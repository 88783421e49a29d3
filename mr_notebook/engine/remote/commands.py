"""``mr-notebook engine …`` and ``%model engine …``: add, list and remove remote engines (text for both)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mr_notebook.engine.remote.config import EngineSpec, add_spec, remove_spec
from mr_notebook.engine.remote.registry import RemoteEngines
from mr_notebook.errors import InvalidRequest
from mr_notebook.tables import text_table


async def _listing(home: Path, refresh: bool) -> tuple[RemoteEngines, list[tuple[str, str]]]:
    registry = RemoteEngines(home)
    try:
        found = await registry.models(refresh=refresh)
        return registry, [(engine.name, model) for engine, model in found]
    finally:
        await registry.close()


def remote_models(home: Path) -> list[dict[str, Any]]:
    """Remote models as ``list --json`` rows (asks each engine, at most a few seconds; none: no request)."""
    if not RemoteEngines(home).engines():
        return []
    _, found = asyncio.run(_listing(home, True))
    return [
        {"id": f"remote:{name}/{model}", "tags": [f"{name}/{model}"], "created": 0, "config": {"engine": name}}
        for name, model in found
    ]


def engine_command(
    home: Path, action: str, name: str | None, url: str | None, kind: str = "openai", api_key_env: str | None = None
) -> str:
    """Do ``action`` (add, ls, rm) and say what happened."""
    if action == "add":
        if not name or not url:
            raise InvalidRequest("Usage: engine add NAME URL [--kind openai|ollama|model-runner] [--api-key-env VAR]")
        spec = EngineSpec.parse({"name": name, "url": url, "kind": kind, "api_key_env": api_key_env})
        add_spec(home, spec)
        return f"Engine {spec.name} added ({spec.url}); its models are {spec.name}/<model id> (`engine ls` lists them)."
    if action == "rm":
        if not name:
            raise InvalidRequest("Usage: engine rm NAME")
        remove_spec(home, name)
        return f"Engine {name} removed."
    if action != "ls":
        raise InvalidRequest(f"Unknown engine action {action!r}: use add, ls or rm.")
    registry, found = asyncio.run(_listing(home, True))
    rows = []
    for status in registry.status():
        models = [m for n, m in found if n == status["name"]]
        health = "up" if status["healthy"] else f"down: {status['last_error']}" if status["last_error"] else "?"
        latency = f"{status['latency'] * 1000:.0f} ms" if status["latency"] is not None else ""
        rows.append(
            {
                "ENGINE": status["name"],
                "URL": status["url"],
                "KIND": status["kind"],
                "KEY FROM": registry.engines()[status["name"]].spec.api_key_env or "",
                "HEALTH": health[:80],
                "LATENCY": latency,
                "MODELS": ", ".join(f"{status['name']}/{m}" for m in models[:20]) + (" …" if len(models) > 20 else ""),
            }
        )
    return text_table(rows, ("ENGINE", "URL", "KIND", "KEY FROM", "HEALTH", "LATENCY", "MODELS"))
