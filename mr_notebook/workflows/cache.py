"""On-disk cache of replies for ``map``: rerunning a cell (or resuming after Stop) sends only what is missing.

One small JSON file per request, named by the SHA-256 of (model digest, parameters, messages) and written
atomically (temporary file + rename), so concurrent kernels never see half a file and identical requests
from two kernels simply write the same bytes. A key includes the model's digest, not its name: a name moved
to another file misses the cache instead of returning the old model's answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``{store home}/cache/map``: beside the models whose digests key it."""
    from mr_notebook.settings import default_home

    return default_home(os.environ if env is None else env) / "cache" / "map"


def request_key(digest: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> str:
    body = json.dumps({"digest": digest, "messages": messages, "params": dict(params)}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


class ReplyCache:
    """Reply texts by request key under ``directory`` (created on first write)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored entry (``{"text", "usage", "finish_reason"}``) or None."""
        try:
            entry = json.loads(self._path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a damaged entry is a miss, and gets rewritten
            log.warning("ignoring unreadable cache entry %s: %s", key, exc)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("text"), str) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(entry, handle)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
