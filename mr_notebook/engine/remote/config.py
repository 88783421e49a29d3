"""Which remote engines exist: ``engines.json`` in the store home, plus those a host configures.

An engine is a name, a base URL, a kind (which API lists its models) and, optionally, the *name* of an
environment variable holding its API key. The key itself is read from the environment of the serving process
when a request goes out, so it is never written to disk and never reaches a kernel.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from filelock import FileLock

from mr_notebook.errors import InvalidRequest, ModelNotFound, StoreError
from mr_notebook.store.files import write_json_atomic

KINDS = ("openai", "ollama", "model-runner")
#: Engine names are one path segment that cannot be mistaken for a model namespace we serve ourselves.
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Names that already mean something under /engines/ or as a model namespace of ours.
RESERVED = frozenset({"v1", "llama.cpp", "status", "ps", "df", "unload", "_configure", "ai", "hf.co", "docker.io"})


@dataclass(frozen=True)
class EngineSpec:
    """One remote engine as configured; ``api_key_env`` names a variable, it never holds the key."""

    name: str
    url: str
    kind: str = "openai"
    api_key_env: str | None = None
    #: Requests sent to this engine at once; more wait (a client that goes away stops waiting).
    max_concurrency: int = 8
    #: Seconds without a byte from the engine before the request fails.
    timeout: float = 300.0

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> EngineSpec:
        """Validate a spec from JSON, a CLI, a magic or traitlets; errors say what to write instead."""
        if not isinstance(data, Mapping):
            raise InvalidRequest("An engine is an object like {'name': 'gpu', 'url': 'http://gpu-box:8000'}.")
        name = data.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
            raise InvalidRequest(
                f"Engine name {str(name)[:64]!r} is not usable: use lowercase letters, digits, '.', '_' or '-' "
                f"(e.g. gpu-box), and none of {', '.join(sorted(RESERVED))}.",
                "name",
            )
        url = data.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if not isinstance(url, str) or parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(
                f"Engine URL {str(url)[:200]!r} is not an http(s) URL; give one like http://gpu-box:8000 "
                "(with /v1 or without).",
                "url",
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise InvalidRequest(
                "Engine URLs carry no credentials or query: put the key in an environment variable and give "
                "its name with --api-key-env.",
                "url",
            )
        kind = data.get("kind") or "openai"
        if kind not in KINDS:
            raise InvalidRequest(f"Engine kind {kind!r} is unknown; use one of {', '.join(KINDS)}.", "kind")
        key_env = data.get("api_key_env") or None
        if key_env is not None and (not isinstance(key_env, str) or not _ENV_VAR.match(key_env)):
            raise InvalidRequest(
                "api_key_env is the NAME of an environment variable holding the key (e.g. VLLM_API_KEY), "
                "never the key itself.",
                "api_key_env",
            )
        concurrency = data.get("max_concurrency", 8)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= 1024:
            raise InvalidRequest("max_concurrency must be an integer from 1 to 1024.", "max_concurrency")
        timeout = data.get("timeout", 300.0)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 86400:
            raise InvalidRequest("timeout must be a number of seconds from 0 to 86400.", "timeout")
        return cls(name, url.rstrip("/"), kind, key_env, concurrency, float(timeout))

    @property
    def api_root(self) -> str:
        """The OpenAI root: ``…/v1`` (added when the URL does not end with it)."""
        if self.kind == "model-runner" and not self.url.endswith("/v1"):
            return self.url + "/engines/v1"
        return self.url if self.url.endswith("/v1") else self.url + "/v1"

    def headers(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The Authorization header, with the key read now from the environment."""
        env = os.environ if env is None else env
        key = env.get(self.api_key_env) if self.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def config_path(home: Path) -> Path:
    return home / "engines.json"


def load_specs(home: Path) -> list[EngineSpec]:
    """The engines stored in ``home`` (none when the file does not exist); a broken file is an error."""
    path = config_path(home)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise StoreError(f"Cannot read {path}: {exc}. Fix or delete the file, then add the engines again.") from None
    items = data.get("engines") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise StoreError(f"{path} has no 'engines' list. Fix or delete the file, then add the engines again.")
    return [EngineSpec.parse(item) for item in items]


def _save(home: Path, specs: Iterable[EngineSpec]) -> None:
    write_json_atomic(config_path(home), {"engines": [spec.to_json() for spec in specs]})


def _lock(home: Path) -> FileLock:
    (home / "locks").mkdir(parents=True, exist_ok=True)
    return FileLock(str(home / "locks" / "engines.lock"))


def add_spec(home: Path, spec: EngineSpec) -> list[EngineSpec]:
    """Store ``spec`` (replacing an engine of the same name); returns the new list."""
    home.mkdir(parents=True, exist_ok=True)
    with _lock(home):
        specs = [s for s in load_specs(home) if s.name != spec.name] + [spec]
        _save(home, specs)
    return specs


def remove_spec(home: Path, name: str) -> list[EngineSpec]:
    with _lock(home):
        specs = load_specs(home)
        kept = [s for s in specs if s.name != name]
        if len(kept) == len(specs):
            known = ", ".join(s.name for s in specs) or "none"
            raise ModelNotFound(f"No engine named {name!r} (engines: {known}); `mr-notebook engine ls` lists them.")
        _save(home, kept)
    return kept
