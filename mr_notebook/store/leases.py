"""Leases: the blobs an in-flight pull or import is about to name, so prune, purge and rm leave them alone.

A pull commits its blobs one by one and names them in a manifest only at the end; until then nothing in the
index says they are wanted, and a garbage collection would delete them (a split model could lose many GB).
A lease says so: ``leases/<id>.json`` lists the digests, and ``leases/<id>.lock`` is held (a file lock) for
as long as the pull runs. Collectors (who hold the index lock) keep every digest of a live lease; a lease
whose lock they can take belongs to a process that died, and is removed. Leases are taken and extended
under the index lock too, so a collection either sees a lease or finishes before its pull looks at the store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

from filelock import FileLock, Timeout

from mr_notebook.store.files import write_json_atomic
from mr_notebook.store.locking import StoreLock


class Lease:
    """One pull's claim on digests; :meth:`add` extends it, :meth:`release` ends it."""

    def __init__(self, folder: Path, index_lock: StoreLock) -> None:
        self._index_lock = index_lock
        self.id = uuid.uuid4().hex
        self.path = folder / f"{self.id}.json"
        self._lock = FileLock(str(folder / f"{self.id}.lock"), timeout=0)
        self.digests: set[str] = set()
        folder.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()

    def add(self, digests: Iterable[str]) -> None:
        """Claim more digests (before looking whether the store has them)."""
        new = set(digests) - self.digests
        if not new:
            return
        self.digests |= new
        with self._index_lock:
            write_json_atomic(self.path, {"digests": sorted(self.digests)})

    def release(self) -> None:
        self.path.unlink(missing_ok=True)  # first: a collector only looks at locks that have a list
        self._lock.release()
        Path(self._lock.lock_file).unlink(missing_ok=True)


def live_digests(folder: Path) -> set[str]:
    """Digests claimed by running pulls; removes the leases of processes that died (caller holds the index lock)."""
    claimed: set[str] = set()
    if not folder.is_dir():
        return claimed
    for listing in folder.glob("*.json"):
        lock = FileLock(str(listing.with_suffix(".lock")), timeout=0)
        try:
            lock.acquire()
        except Timeout:  # its pull is running
            try:
                data = json.loads(listing.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # released meanwhile, or being replaced (atomically): nothing to keep from it
            claimed |= {str(d) for d in data.get("digests", [])} if isinstance(data, dict) else set()
            continue
        try:  # nobody holds it: the pull's process ended without releasing it
            listing.unlink(missing_ok=True)
        finally:
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)
    return claimed
