"""Which registries get plain HTTP, and the credentials a registry client offers.

Credentials, first match wins:

* ``MR_NOTEBOOK_REGISTRY_AUTH``: ``host=user:password`` entries separated by commas or newlines
  (``ghcr.io=me:TOKEN,127.0.0.1:5000=ci:secret``), or a JSON object ``{"host": "user:password"}``;
* ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: the base64 ``auth`` entries under ``auths``
  (what ``docker login`` writes without a credential helper; helpers are not called).

Plain HTTP is used only for loopback registries (``localhost``, ``127.*``, ``[::1]``) and for hosts listed
(comma separated, ``host[:port]``) in ``MR_NOTEBOOK_INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path

from mr_notebook.errors import PullError
from mr_notebook.hosts import is_loopback

HUB_HOST = "registry-1.docker.io"


def scheme_for(host: str, env: Mapping[str, str]) -> str:
    """``http`` for loopback and ``MR_NOTEBOOK_INSECURE_REGISTRIES`` hosts, else ``https``."""
    insecure = {h.strip().lower() for h in env.get("MR_NOTEBOOK_INSECURE_REGISTRIES", "").split(",")}
    return "http" if is_loopback(host) or host.lower() in insecure else "https"


def credentials(host: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    raw = env.get("MR_NOTEBOOK_REGISTRY_AUTH", "").strip()
    if raw:
        entries: dict[str, str] = {}
        if raw.startswith("{"):
            try:
                entries = {str(k): str(v) for k, v in json.loads(raw).items()}
            except (ValueError, AttributeError):
                raise PullError(
                    'MR_NOTEBOOK_REGISTRY_AUTH is not valid JSON; use {"host": "user:password"} or host=user:password,…'
                ) from None
        else:
            for item in re.split(r"[,\n]", raw):
                if "=" in item:
                    key, _, value = item.strip().partition("=")
                    entries[key.strip()] = value
        if host in entries and ":" in entries[host]:
            user, _, password = entries[host].partition(":")
            return user, password
    folder = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME") or Path.home()) / ".docker")
    try:
        auths = json.loads((Path(folder) / "config.json").read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == HUB_HOST:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    for key in keys:
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                continue
            return user, password
    return None
