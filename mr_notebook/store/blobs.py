"""Content-addressed blobs: the files of models, named by sha256, and the partial downloads beside them.

This is the part of the store pullers write to: they append to ``partial_path(digest)`` under
``blob_lock(digest)`` and publish with ``commit_partial``, which verifies the digest and renames.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from mr_notebook.errors import DigestMismatch, StoreError
from mr_notebook.store import external
from mr_notebook.store.files import fsync_dir, sha256_file
from mr_notebook.store.leases import Lease, live_digests
from mr_notebook.store.locking import StoreLock
from mr_notebook.store.locking import lock_timeout as lock_timeout_setting
from mr_notebook.store.records import GGUF_MEDIA_TYPE, ModelFile

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class BlobStore:
    """``blobs/sha256/<hex>`` files and their locks under ``home``."""

    def __init__(self, home: Path, lock_timeout: float | None = None) -> None:
        self.home = home
        #: Seconds to wait for the index lock before StoreLocked (-1: forever).
        self.lock_timeout = lock_timeout_setting() if lock_timeout is None else lock_timeout
        self.blobs_dir = home / "blobs" / "sha256"
        self.locks_dir = home / "locks"
        self.leases_dir = home / "leases"

    def ensure(self) -> None:
        """Create the folders this part needs (on first write)."""
        for folder in (self.blobs_dir, self.locks_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"Cannot create the model store at {self.home}: {exc.strerror}. "
                    "Set MR_NOTEBOOK_HOME to a writable folder."
                ) from exc

    @staticmethod
    def _hex(digest: str) -> str:
        match = _DIGEST.match(digest)
        if match is None:
            raise StoreError(f"Not a sha256 digest: {digest!r}")
        return match.group(1)

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / self._hex(digest)

    def partial_path(self, digest: str) -> Path:
        return self.blobs_dir / f"{self._hex(digest)}.incomplete"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_lock(self, digest: str, timeout: float = -1) -> FileLock:
        """Held while a blob is written, so concurrent pulls of one model download it once."""
        self.ensure()
        return FileLock(str(self.locks_dir / f"blob-{self._hex(digest)}.lock"), timeout=timeout)

    def index_lock(self) -> StoreLock:
        """Held to change the index; waiting ends with StoreLocked (naming the holder) after ``lock_timeout``."""
        self.ensure()
        return StoreLock(self.locks_dir / "index.lock", "index lock", self.lock_timeout)

    @contextmanager
    def lease(self, digests: Iterable[str] = ()) -> Iterator[Lease]:
        """Claim ``digests`` (and those added later) for an in-flight pull: prune, purge and rm keep them."""
        self.ensure()
        lease = Lease(self.leases_dir, self.index_lock())
        try:
            lease.add(digests)
            yield lease
        finally:
            lease.release()

    def leased(self) -> set[str]:
        """Digests running pulls and imports have claimed (call with the index lock held)."""
        return live_digests(self.leases_dir)

    def commit_partial(self, digest: str, computed: str | None = None) -> Path:
        """Verify the ``.incomplete`` file against ``digest`` and publish it as the blob.

        ``computed`` is the digest the caller hashed while writing (saves reading the file again). On a
        mismatch the partial file is deleted and :class:`DigestMismatch` says so.
        """
        partial = self.partial_path(digest)
        actual = computed or sha256_file(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            raise DigestMismatch(
                f"Downloaded data does not match its digest (expected {digest}, got {actual}); "
                "the partial file was deleted. Pull again; if it repeats, the registry serves a corrupt blob."
            )
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, self.blob_path(digest))  # replaces a broken reference's link, never its target
        fsync_dir(self.blobs_dir)
        external.forget(self, digest)  # the store's own file now: no adoption record to check at load
        return self.blob_path(digest)

    def add_blob_file(self, src: Path, *, link: bool = True, lease: Lease | None = None) -> ModelFile:
        """Put a local file into the store (hard link when possible, else copy) and return its entry.

        With ``lease``, the blob is claimed before the store is looked at, so no prune removes it before the
        caller names it in a manifest.
        """
        digest = sha256_file(src)
        if lease is not None:
            lease.add([digest])
        with self.blob_lock(digest):
            if not self.has_blob(digest):
                partial = self.partial_path(digest)
                partial.unlink(missing_ok=True)
                linked = False
                if link:
                    try:
                        os.link(src, partial)
                        linked = True
                    except OSError:
                        linked = False  # another filesystem, or links not allowed: copy instead
                if not linked:
                    try:
                        shutil.copyfile(src, partial)
                    except OSError as exc:
                        partial.unlink(missing_ok=True)
                        raise StoreError(f"Could not copy {src} into the store: {exc.strerror}.") from exc
                # Hash the copy, not the source: it catches a file that changed while it was copied.
                self.commit_partial(digest, None if not linked else digest)
        return ModelFile(digest=digest, size=src.stat().st_size, media_type=GGUF_MEDIA_TYPE, name=src.name)
