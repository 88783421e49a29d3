"""prune, purge and df: the store's garbage collection and accounting.

Both collectors run under the index lock and spare what pulls in flight have claimed (their leases, see
:mod:`.leases`) and partial files a pull is writing (held blob locks). Blobs adopted from other tools may be
symlinks: sizes come from ``lstat`` (a reference takes no space here) and deleting one removes the link only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from mr_notebook.errors import StoreError
from mr_notebook.store.links import remove_links

if TYPE_CHECKING:
    from mr_notebook.store.store import Store


def prune(store: Store) -> dict[str, int]:
    removed = reclaimed = 0
    if not store.blobs_dir.is_dir():
        return {"files": 0, "bytes": 0}
    with store._locked_index() as index:
        leased = {store._hex(d) for d in store.leased()}
        used = {store._hex(f.digest) for r in store._records(index) for f in r.files} | leased
        for path in list(store.blobs_dir.iterdir()):
            stem = path.name.removesuffix(".incomplete")
            if stem in leased:  # an in-flight pull's: committed, being written, or next in line
                continue
            if path.name.endswith(".incomplete"):
                try:  # a pull in progress holds the blob lock: leave its partial alone
                    with store.blob_lock("sha256:" + stem, timeout=0):
                        size = path.lstat().st_size
                        path.unlink()
                except (Timeout, StoreError, FileNotFoundError):
                    continue
            elif stem in used:
                continue
            else:
                size = path.lstat().st_size
                path.unlink()
            removed += 1
            reclaimed += size
        for path in store.models_dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)
        files, size = _abandoned_uploads(store)
        removed += files
        reclaimed += size
        _forget_missing(store)
        ids = {store._hex(model_id) for model_id in index.values()}
        for folder in list(store.links_dir.iterdir()) if store.links_dir.is_dir() else []:
            if folder.name not in ids:  # a removed model's, or a half-built one (links take no space)
                remove_links(folder)
    return {"files": removed, "bytes": reclaimed}


def _abandoned_uploads(store: Store) -> tuple[int, int]:
    """Delete uploads (``POST /models/load``) whose server went away mid-transfer; running ones hold their lock."""
    removed = reclaimed = 0
    folder = store.home / "uploads"
    for part in list(folder.glob("*.part")) if folder.is_dir() else []:
        lock = FileLock(f"{part}.lock", timeout=0)
        try:
            with lock:
                size = part.lstat().st_size
                part.unlink()
        except (Timeout, FileNotFoundError):
            continue
        Path(lock.lock_file).unlink(missing_ok=True)
        removed += 1
        reclaimed += size
    return removed, reclaimed


def _forget_missing(store: Store) -> None:
    """Drop adoption records whose blob is gone."""
    folder = store.home / "external"
    for record in list(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            blob = store.blob_path("sha256:" + record.stem)
        except StoreError:  # not a record of ours (its name is no digest)
            continue
        if not blob.is_symlink() and not blob.is_file():
            record.unlink(missing_ok=True)


def purge(store: Store) -> dict[str, int]:
    """Pulls in flight keep their files: they finish and publish their model afterwards, or fail on their own."""
    usage = df(store)
    kept = 0
    with store.index_lock():
        store.index_path.unlink(missing_ok=True)
        for folder in (store.models_dir, store.links_dir):
            shutil.rmtree(folder, ignore_errors=True)
        leased = {store._hex(d) for d in store.leased()}
        for path in list(store.blobs_dir.iterdir()) if store.blobs_dir.is_dir() else []:
            stem = path.name.removesuffix(".incomplete")
            if stem in leased:
                kept += path.lstat().st_size
                continue
            if not path.name.endswith(".incomplete"):
                path.unlink(missing_ok=True)  # an adopted file: only our link to it
                continue
            try:
                with store.blob_lock("sha256:" + stem, timeout=0):
                    path.unlink(missing_ok=True)
            except (Timeout, StoreError):
                kept += path.lstat().st_size  # a pull is writing it
        _forget_missing(store)
        _abandoned_uploads(store)
    return {"models": usage["models"], "bytes": usage["blobs"] + usage["partials"] - kept}


def df(store: Store) -> dict[str, int]:
    blobs = partials = 0
    if store.blobs_dir.is_dir():
        for path in store.blobs_dir.iterdir():
            size = path.lstat().st_size  # a reference to another tool's file takes no space here
            if path.name.endswith(".incomplete"):
                partials += size
            else:
                blobs += size
    return {"blobs": blobs, "partials": partials, "total": blobs + partials, "models": len(store.list())}
