"""Where a result came from: model name and digest, engine and version, parameters, seed, time.

Stored with every ``%%chat`` reply (and in the notebook's output metadata), ``_chat`` and ``map`` result, so
a notebook opened a month later says which exact model file produced what it shows.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mr_notebook.client import Engine

#: Request fields that are not sampling parameters (the messages are the prompt, not a parameter).
_NOT_PARAMS = {"messages", "model", "stream", "stream_options"}


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def engine_info(engine: Engine) -> dict[str, Any]:
    """The engine and its version (the remote server's own, when it says; llama_cpp is never imported here)."""
    from mr_notebook import __version__

    info: dict[str, Any] = {"name": "mr-notebook", "mode": engine.mode, "backend": "llama.cpp"}
    if engine.mode == "remote":
        status = engine.status()
        info["version"] = str(status.get("version") or "unknown")
        if status.get("llama_cpp_python"):
            info["llama_cpp_python"] = str(status["llama_cpp_python"])
    else:
        info["version"] = __version__
        info["llama_cpp_python"] = _version("llama-cpp-python")
    return info


class ProvenanceSource:
    """Builds provenance records for one engine; the digest and engine info are looked up once each."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._digests: dict[str, str] = {}
        self._engine_info: dict[str, Any] | None = None

    def digest(self, model: str) -> str:
        """The stored model's digest (its id, ``sha256:…``): which file answered, not just which name."""
        if model not in self._digests:
            self._digests[model] = str(self.engine.inspect(model).get("id") or "")
        return self._digests[model]

    def record(self, model: str, params: dict[str, Any], *, started: float | None = None) -> dict[str, Any]:
        if self._engine_info is None:
            self._engine_info = engine_info(self.engine)
        sampling = {k: v for k, v in params.items() if k not in _NOT_PARAMS}
        when = datetime.fromtimestamp(started if started is not None else time.time(), tz=timezone.utc)
        return {
            "model": model,
            "digest": self.digest(model),
            "engine": dict(self._engine_info),
            "params": sampling,
            "seed": params.get("seed"),
            "time": when.isoformat(timespec="seconds"),
        }
