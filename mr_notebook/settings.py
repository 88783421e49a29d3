"""Settings from the environment, read when used and passed on (never at import time)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mr_notebook.errors import InvalidRequest

APP_NAME = "mr-notebook"
DEFAULT_PORT = 12434
DEFAULT_KEEP_ALIVE = 300.0  # seconds, Docker Model Runner / Ollama default (5 minutes)
DEFAULT_CONTEXT_CAP = 4096
DEFAULT_MEMORY_FRACTION = 0.75

_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(value: str | float | int | None, *, param: str = "keep_alive") -> float:
    """``"5m"`` → 300.0; plain numbers are seconds; negative means forever (Ollama semantics)."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise InvalidRequest(f"{param} must be a duration like '30s', '5m', '1h', 0 or -1", param)
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if match is None:
        raise InvalidRequest(
            f"Invalid {param} {value!r}: use a duration like '30s', '5m', '1h', '0' (unload when idle) "
            "or '-1' (never unload).",
            param,
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """300.0 → ``"5m"``; negative → ``"forever"``."""
    if seconds < 0:
        return "forever"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_size(value: str, *, param: str = "memory budget") -> int:
    """``"8GiB"``, ``"512M"``, ``"1000000"`` → bytes (K/M/G/T are powers of 1024)."""
    match = _SIZE.match(value)
    if match is None:
        raise InvalidRequest(f"Invalid {param} {value!r}: use a size like '8GiB', '512M' or bytes.", param)
    unit = (match.group(2) or "").lower()[:1]
    power = " kmgt".index(unit) if unit else 0
    return int(float(match.group(1)) * 1024**power)


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """The store home: ``MR_NOTEBOOK_HOME``, else the per-user data folder."""
    env = os.environ if env is None else env
    if env.get("MR_NOTEBOOK_HOME"):
        return Path(env["MR_NOTEBOOK_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def runtime_file(home: Path) -> Path:
    """Where a running ``mr-notebook serve`` announces itself in a store home (``{"url", "pid", "auth"}``)."""
    return home / "run" / "server.json"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name}={raw!r} is not an integer; unset it or give a number.", name) from None


@dataclass(frozen=True)
class EngineSettings:
    """What the Runner needs to know; hosts build it from env, traitlets or flags."""

    #: Bytes the loaded models may use in total; None: a fraction of available memory at load time.
    memory_budget: int | None = None
    max_models: int = 4
    keep_alive: float = DEFAULT_KEEP_ALIVE
    #: Requests waiting per model before new ones get QueueFull.
    max_queue: int = 64
    load_timeout: float = 300.0
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        budget = env.get("MR_NOTEBOOK_MEMORY_BUDGET")
        keep_alive = env.get("MR_NOTEBOOK_KEEP_ALIVE")
        return cls(
            memory_budget=parse_size(budget, param="MR_NOTEBOOK_MEMORY_BUDGET") if budget else None,
            max_models=_int_env(env, "MR_NOTEBOOK_MAX_MODELS", 4),
            keep_alive=parse_duration(keep_alive) if keep_alive else DEFAULT_KEEP_ALIVE,
            max_queue=_int_env(env, "MR_NOTEBOOK_MAX_QUEUE", 64),
        )
