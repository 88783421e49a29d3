"""Blobs the store adopted from another tool (hard links and references, see :mod:`.imports.adopt`).

``external/<hex>.json`` says where each came from, how, and the size and mtime it had when it was verified.
:func:`check` runs before every load: an adopted file that changed since is refused, not loaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mr_notebook.errors import InvalidModelFile, LocalFileNotFound
from mr_notebook.store.files import sha256_file, write_json_atomic

if TYPE_CHECKING:
    from mr_notebook.store.blobs import BlobStore


def stamp(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_size, stat.st_mtime_ns


def record_path(store: BlobStore, digest: str) -> Path:
    return store.home / "external" / f"{store.blob_path(digest).name}.json"


def describe(store: BlobStore, digest: str) -> dict[str, Any] | None:
    """The adoption record of a blob (``kind``, ``path``, ``size``, ``mtime_ns``), or None if the store wrote it."""
    try:
        data = json.loads(record_path(store, digest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def forget(store: BlobStore, digest: str) -> None:
    record_path(store, digest).unlink(missing_ok=True)


def check(store: BlobStore, digest: str, model: str) -> None:
    """Refuse to load an adopted file that changed since it was verified; a touched but equal file passes.

    Both refusals are the user's to fix (import again), so they are 400s over HTTP, not server errors.
    """
    record = describe(store, digest)
    if record is None:
        return
    source = record.get("path", "?")
    again = f"Import it again (`mr-notebook import --from {source}`) or pull {model}."
    try:
        now = store.blob_path(digest).stat()
    except OSError:
        raise LocalFileNotFound(
            f"Model {model} uses {source}, which is gone (it was imported, not copied). {again}"
        ) from None
    if stamp(now) == (record.get("size"), record.get("mtime_ns")):
        return
    if now.st_size != record.get("size") or sha256_file(store.blob_path(digest)) != digest:
        raise InvalidModelFile(f"Model {model} uses {source}, which changed since it was imported; not loaded. {again}")
    record["mtime_ns"] = now.st_mtime_ns  # touched, same bytes: remember the new time, hash once
    write_json_atomic(record_path(store, digest), record)
