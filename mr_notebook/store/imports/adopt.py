"""Adopt a file another tool stored, without writing its bytes again: a hard link, else a verified reference.

The file is hashed once (reading only) and must match the digest its tool named it by. Then:

* **hard link** (same filesystem): ``blobs/sha256/<hex>`` becomes a second name of the same inode. No byte
  is written; the other tool may delete its name and ours keeps the data.
* **reference** (another filesystem, or links refused, or asked for): ``blobs/sha256/<hex>`` is a symlink to
  the absolute path of the file. The store never writes, moves or deletes through it (``rm``, ``prune`` and
  ``purge`` remove the link only; a pull that finds it broken replaces the link, not the file).

Either way ``external/<hex>.json`` records where it came from, its size and its mtime. Before a model is
loaded (:func:`check`) each adopted file is stat'ed: a changed size refuses the load; a changed mtime costs
one re-hash, and the load goes on only if the content is still the one that was verified.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from mr_notebook.errors import StoreError
from mr_notebook.store.external import record_path, stamp
from mr_notebook.store.files import fsync_dir, sha256_file, write_json_atomic
from mr_notebook.store.leases import Lease
from mr_notebook.store.records import ModelFile
from mr_notebook.store.store import Store

#: Link errors that mean "use a reference instead": another filesystem, links not allowed or not supported.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class Adopted:
    file: ModelFile
    how: str  # "hard link" | "reference" | "already stored"


def adopt(
    store: Store,
    src: Path,
    *,
    media_type: str,
    lease: Lease,
    claimed: str | None = None,
    link: bool = True,
    name: str = "",
) -> Adopted:
    """Make ``src`` a blob of ``store`` without copying it; ``claimed`` is the digest its tool gave it."""
    real = src.resolve(strict=True)  # Hugging Face snapshots are symlinks into the cache's blobs
    before = real.stat()
    digest = sha256_file(real)
    if claimed is not None and claimed != digest:
        raise StoreError(
            f"{real} does not match the digest its tool recorded ({claimed}, the file has {digest}); it was "
            "changed or damaged. Nothing was imported; repair it with the tool that stored it."
        )
    if stamp(real.stat()) != stamp(before):
        raise StoreError(f"{real} changed while it was being verified; import it again when it is not being written.")
    entry = ModelFile(digest=digest, size=before.st_size, media_type=media_type, name=name or real.name)
    lease.add([digest])  # before looking: no prune may take it between here and the manifest
    with store.blob_lock(digest):
        if store.has_blob(digest):
            return Adopted(entry, "already stored")
        how = "reference"
        if link:
            how = "hard link" if _link(store, real, digest) else "reference"
        if how == "reference":
            _reference(store, real, digest)
        fsync_dir(store.blobs_dir)
        record = record_path(store, digest)
        record.parent.mkdir(exist_ok=True)
        write_json_atomic(
            record,
            {
                "kind": "link" if how == "hard link" else "reference",
                "path": str(real),
                "read_only": True,
                "size": before.st_size,
                "mtime_ns": before.st_mtime_ns,
            },
        )
    return Adopted(entry, how)


def _link(store: Store, real: Path, digest: str) -> bool:
    partial = store.partial_path(digest)
    partial.unlink(missing_ok=True)
    try:
        os.link(real, partial)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return False
        raise StoreError(f"Could not link {real} into the store: {exc.strerror}.") from exc
    os.replace(partial, store.blob_path(digest))
    return True


def _reference(store: Store, real: Path, digest: str) -> None:
    tmp = store.blobs_dir / f".{uuid.uuid4().hex}.ref"
    try:
        tmp.symlink_to(real)
        os.replace(tmp, store.blob_path(digest))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(
            f"Could not reference {real} from the store ({exc.strerror}); this filesystem allows neither hard "
            "links nor symlinks. Use `mr-notebook package --gguf PATH NAME --copy` to copy it instead."
        ) from exc
