"""Docker Model Runner's store: ``$MODELS_PATH``, else ``~/.docker/models`` (its ``envconfig.ModelsPath``).

Layout (docker/model-runner ``pkg/distribution/internal/store``): ``models.json`` is the index
(``{"models": [{"id": "sha256:<manifest>", "tags": [...], "files": [...]}]}``), ``manifests/sha256/<hex>`` the
raw OCI manifests, ``blobs/sha256/<hex>`` the layers and configs. Its artifacts are the ones our OCI pull
stores, so models keep the same names and ids (the manifest digest) and the same config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mr_notebook.store.imports.base import Found, FoundFile, small_json
from mr_notebook.store.pull.oci import FILE_TYPES, MODEL_CONFIG_TYPES, created_of
from mr_notebook.store.records import GGUF_MEDIA_TYPE
from mr_notebook.store.refs import parse_ref

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_HUB_PREFIXES = ("index.docker.io/", "docker.io/")


def root(env: Mapping[str, str]) -> Path:
    if env.get("MODELS_PATH"):
        return Path(env["MODELS_PATH"]).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".docker" / "models"


def _name(tag: str) -> str | None:
    """Model Runner writes ``index.docker.io/ai/smollm2:latest`` (newer) or ``ai/smollm2:latest``."""
    for prefix in _HUB_PREFIXES:
        tag = tag.removeprefix(prefix)
    try:
        return str(parse_ref(tag))
    except ValueError:
        return None


def find(env: Mapping[str, str]) -> list[Found]:
    base = root(env)
    try:
        index = small_json(base / "models.json")
    except (OSError, ValueError):
        return []
    found: list[Found] = []
    for entry in index.get("models", []) if isinstance(index, dict) else []:
        if not isinstance(entry, dict) or not _DIGEST.match(str(entry.get("id", ""))):
            continue
        model_id = str(entry["id"])
        names = [n for n in (_name(str(t)) for t in entry.get("tags") or []) if n]
        manifest_path = base / "manifests" / "sha256" / model_id.removeprefix("sha256:")
        try:
            manifest = small_json(manifest_path)
        except (OSError, ValueError):
            continue
        files = []
        for layer in manifest.get("layers", []):
            digest = str(layer.get("digest", "")) if isinstance(layer, dict) else ""
            if layer.get("mediaType") in FILE_TYPES and _DIGEST.match(digest):
                title = (layer.get("annotations") or {}).get("org.opencontainers.image.title", "")
                blob = base / "blobs" / "sha256" / digest.removeprefix("sha256:")
                files.append(FoundFile(blob, str(layer["mediaType"]), digest, str(title)))
        if not any(f.media_type == GGUF_MEDIA_TYPE for f in files) or not all(f.path.is_file() for f in files):
            continue  # safetensors models, or a pull that never finished
        config, created = _config(base, manifest)
        # One Found per name (an untagged model has none: nothing to call it by), all with the same id.
        for name in names:
            found.append(
                Found("model-runner", name, manifest_path, files, config=config, model_id=model_id, created=created)
            )
    return found


def _config(base: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    descriptor = manifest.get("config") or {}
    digest = str(descriptor.get("digest", ""))
    if descriptor.get("mediaType") not in MODEL_CONFIG_TYPES or not _DIGEST.match(digest):
        return {}, None
    try:
        document = small_json(base / "blobs" / "sha256" / digest.removeprefix("sha256:"))
    except (OSError, ValueError):
        return {}, None
    if not isinstance(document, dict):
        return {}, None
    inner = document.get("config")
    return (dict(inner) if isinstance(inner, dict) else {}), created_of(document)
