"""Settings from the environment, read when used and passed on (never at import time)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mr_notebook.errors import InvalidRequest

log = logging.getLogger(__name__)

APP_NAME = "mr-notebook"
DEFAULT_PORT = 12434
DEFAULT_KEEP_ALIVE = 300.0  # seconds, Docker Model Runner / Ollama default (5 minutes)
DEFAULT_CONTEXT_CAP = 4096
DEFAULT_MEMORY_FRACTION = 0.75
#: Longest finite duration (one year): beyond it, timers and expiry dates stop being meaningful; use -1.
MAX_DURATION = 365 * 86400.0

_DURATION = re.compile(r"^\s*(-?\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


def parse_duration(value: str | float | int | None, *, param: str = "keep_alive") -> float:
    """``"5m"`` → 300.0; plain numbers are seconds; -1 means forever (Ollama semantics).

    The one parser for every duration that enters (API bodies, CLI flags, magics, environment, traits):
    NaN, infinities, other negatives and anything over a year are refused with a message saying what to send.
    """
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest(f"{param} must be a duration like '30s', '5m', '1h', 0 or -1", param)
    if isinstance(value, str):
        match = _DURATION.match(value) if len(value) <= 40 else None
        if match is None:
            raise InvalidRequest(
                f"Invalid {param} {value[:40]!r}: use a duration like '30s', '5m', '1h', '0' (unload when idle) "
                "or '-1' (never unload).",
                param,
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    if seconds == -1:
        return -1.0
    if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_DURATION:
        raise InvalidRequest(
            f"Invalid {param} {_shown(value)!r}: give 0 to {MAX_DURATION / 86400:g} days (e.g. '30s', '5m', '1h'), "
            "0 to unload when idle, or -1 to never unload.",
            param,
        )
    return seconds


def _shown(value: str | float | int) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) > 10**15:  # str() of a huge int can itself fail
        return "a number too large"
    return f"{value:.6g}"


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


def read_secret_file(path: str | Path, *, what: str = "API key") -> str:
    """The secret in a file (first line, whitespace stripped): keeps keys out of ``ps`` and shell history."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Cannot read the {what} from {path}: {exc}. Give a readable text file.") from None
    secret = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise InvalidRequest(f"The {what} file {path} is empty; put the key on its first line.")
    return secret


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


def read_runtime_file(home: Path) -> dict[str, Any] | None:
    """The ``mr-notebook serve`` announced in ``home``: ``{"url", "pid", "auth"}``, or None when there is none,
    the file is unreadable, or its process is gone (a killed server leaves its file behind)."""
    path = runtime_file(home)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable runtime file %s: %s", path, exc)
        return None
    if not isinstance(info, dict) or not isinstance(info.get("url"), str):
        return None
    pid = info.get("pid")
    if isinstance(pid, int) and not _pid_alive(pid):
        log.info("runtime file %s names pid %s, which is gone", path, pid)
        return None
    return info


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(f"{name}={raw!r} is not an integer; unset it or give a number.", name) from None


def _positive_env(env: Mapping[str, str], name: str) -> int | None:
    value = _int_env(env, name, 0)
    if value < 0 or value > 1024:
        raise InvalidRequest(f"{name}={value} is out of range; give a number from 1 to 1024, or unset it.", name)
    return value or None


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
    #: CPU threads per worker; None: the physical cores this process may use.
    threads: int | None = None
    #: Sequences each worker decodes at once (continuous batching); None: 4.
    parallel: int | None = None

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
            threads=_positive_env(env, "MR_NOTEBOOK_THREADS"),
            parallel=_positive_env(env, "MR_NOTEBOOK_PARALLEL"),
        )
