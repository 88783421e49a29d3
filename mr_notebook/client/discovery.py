"""Find the engine to talk to: the Jupyter server's, a running ``mr-notebook serve``, or one in-process."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mr_notebook.client.base import Engine
from mr_notebook.settings import default_home, read_runtime_file, runtime_file

log = logging.getLogger(__name__)

#: A stale runtime file must not make a kernel hang: the health check gets this long.
HEALTH_TIMEOUT = 1.5


def _healthy(url: str, token: str | None, timeout: float) -> bool:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(url.rstrip("/") + "/health", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        log.info("engine at %s does not answer: %s", url, exc)
        return False
    # 401 still proves a live server (the key is checked on use, with a message that says which to set).
    return response.status_code < 500


def find_server(home: Path, env: Mapping[str, str], timeout: float = HEALTH_TIMEOUT) -> dict[str, Any] | None:
    """The live ``mr-notebook serve`` described by the runtime file in ``home``, else None."""
    info = read_runtime_file(home)
    if info is None:
        return None
    token = env.get("MR_NOTEBOOK_API_KEY") or env.get("MR_NOTEBOOK_TOKEN") or None
    if not _healthy(info["url"], token, timeout):
        return None
    return {**info, "token": token, "path": str(runtime_file(home))}


def connect(store_home: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Engine:
    """The engine for this process, in this order:

    1. ``MR_NOTEBOOK_URL`` (+ ``MR_NOTEBOOK_TOKEN``), set by the Jupyter server extension for its kernels;
    2. a live ``mr-notebook serve`` announced in ``{store home}/run/server.json`` (pid alive, ``/health``
       answers within 1.5 s; ``MR_NOTEBOOK_API_KEY`` is sent when set);
    3. a :class:`~mr_notebook.client.local.LocalEngine` on the store (its Runner starts on first use).

    ``env`` replaces ``os.environ``. The caller owns the engine: call ``close()`` when done.
    """
    env = os.environ if env is None else env
    home = Path(store_home) if store_home is not None else default_home(env)
    url = env.get("MR_NOTEBOOK_URL")
    if url:
        from mr_notebook.client.remote import RemoteEngine

        token = env.get("MR_NOTEBOOK_TOKEN") or env.get("MR_NOTEBOOK_API_KEY")
        return RemoteEngine(url, token, source="MR_NOTEBOOK_URL")
    server = find_server(home, env)
    if server is not None:
        from mr_notebook.client.remote import RemoteEngine

        return RemoteEngine(server["url"], server["token"], source=f"runtime file {server['path']}")
    from mr_notebook.client.local import LocalEngine
    from mr_notebook.settings import EngineSettings
    from mr_notebook.store import Store

    return LocalEngine(Store(home), EngineSettings.from_env(env), source="in-process", env=env)
