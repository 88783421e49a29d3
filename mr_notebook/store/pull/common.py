"""What every puller shares: progress events and bars, and the resumable, verified blob download.

A blob is written by one process at a time (the store's per-blob file lock), into the store's
``<hex>.incomplete`` file, hashed while it streams (on a thread of its own, see :mod:`.sink`); an existing
partial file is hashed first and the download continues from its end with an HTTP Range request. Only
:meth:`Store.commit_partial` makes it a blob, and only when the sha256 matches. Pullers supply a *fetcher*:
a function that writes the bytes from ``writer.tell()`` onwards into the :class:`HashingWriter` it is given.
"""

from __future__ import annotations

import errno
import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mr_notebook.errors import Cancelled, ModelNotFound, OfflineError, PullError, StoreError
from mr_notebook.progress import throttled
from mr_notebook.store.gguf_meta import format_bytes
from mr_notebook.store.pull.sink import HashingWriter, LimitReached
from mr_notebook.store.refs import ModelRef
from mr_notebook.store.store import ModelRecord, Store

logger = logging.getLogger(__name__)

#: Free space kept beyond the download itself, so a pull never fills the disk to the last byte.
DISK_RESERVE = 64 * 1024 * 1024
_LOCK_POLL = 0.2


@dataclass(frozen=True)
class PullProgress:
    """One progress event; front ends render it (tqdm, NDJSON, widget)."""

    status: str  # "resolving" | "downloading" | "verifying" | "exists" | "done"
    message: str
    digest: str | None = None
    completed: int = 0
    total: int = 0
    overall_completed: int = 0
    overall_total: int = 0


@dataclass(frozen=True)
class PullResult:
    """What a pull did: the stored model, bytes fetched this time, whether it was already up to date."""

    record: ModelRecord
    downloaded: int
    already_present: bool


class Reporter:
    """Turns download steps into :class:`PullProgress` events and, when asked, tqdm bars."""

    def __init__(
        self,
        progress: Callable[[PullProgress], None] | None,
        tqdm_class: type | None,
        cancel: threading.Event | None,
    ) -> None:
        # Pullers report every chunk; front ends get at most ~10 events a second per layer, throttled once here.
        self.progress = throttled(progress)
        self.tqdm_class = tqdm_class
        self.cancel = cancel
        self.overall_total = 0
        self.overall_completed = 0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("Pull cancelled; the partial download is kept and the next pull resumes it.")

    def emit(self, status: str, message: str, digest: str | None = None, completed: int = 0, total: int = 0) -> None:
        if self.progress is None:
            return
        self.progress(
            PullProgress(status, message, digest, completed, total, self.overall_completed, self.overall_total)
        )

    def bar(self, desc: str, total: int, initial: int) -> Any:
        """A tqdm bar in bytes (or None): the CLI's text bar, a notebook's widget bar."""
        if self.tqdm_class is None:
            return None
        return self.tqdm_class(
            total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=True
        )


Fetcher = Callable[[HashingWriter], None]


def stored(store: Store, ref: ModelRef) -> ModelRecord | None:
    """The model stored under ``ref``, if any."""
    try:
        return store.get(ref)
    except ModelNotFound:
        return None


def check_disk_space(folder: Path, needed: int) -> None:
    """Refuse to start a download that cannot fit, before fetching a byte."""
    free = shutil.disk_usage(folder).free
    if needed + DISK_RESERVE > free:
        raise StoreError(
            f"Not enough disk space in {folder}: the download needs {format_bytes(needed)} and "
            f"{format_bytes(free)} is free. Free some space (`mr-notebook rm` unused models, "
            "`mr-notebook prune`) or set MR_NOTEBOOK_HOME to a larger disk, then pull again."
        )


def disk_full(path: Path, exc: OSError) -> StoreError:
    return StoreError(
        f"The disk is full while writing {path} ({exc.strerror}). Free some space (`mr-notebook prune`, "
        "`mr-notebook rm` unused models) and pull again: the download resumes where it stopped."
    )


def unreachable(where: str, exc: BaseException) -> OfflineError:
    return OfflineError(
        f"Cannot reach {where} ({exc or type(exc).__name__}): the network is unreachable or the server is "
        "down. Check the connection and pull again, or import a local GGUF file with "
        "`mr-notebook package --gguf PATH NAME`."
    )


def _acquire(lock: Any, reporter: Reporter, digest: str, label: str) -> None:
    """Wait for the blob lock while another process downloads the blob, staying cancellable."""
    told = False
    while True:
        reporter.check_cancel()
        try:
            lock.acquire(timeout=_LOCK_POLL)
            return
        except TimeoutError:
            if not told:
                reporter.emit("downloading", f"Waiting for another pull of {label}", digest)
                told = True


def fetch_blob(store: Store, digest: str, size: int, fetcher: Fetcher, reporter: Reporter, label: str) -> int:
    """Make ``digest`` a verified blob of the store; returns the bytes fetched over the network."""
    if store.has_blob(digest):
        reporter.overall_completed += size
        reporter.emit("exists", f"{label}: already stored", digest, size, size)
        return 0
    lock = store.blob_lock(digest)
    _acquire(lock, reporter, digest, label)
    try:
        if store.has_blob(digest):  # another process finished it while we waited
            reporter.overall_completed += size
            reporter.emit("exists", f"{label}: already stored", digest, size, size)
            return 0
        return _download_locked(store, digest, size, fetcher, reporter, label)
    finally:
        lock.release()


def _download_locked(store: Store, digest: str, size: int, fetcher: Fetcher, reporter: Reporter, label: str) -> int:
    partial = store.partial_path(digest)
    try:
        existing = partial.stat().st_size if partial.exists() else 0
        if existing > size:  # not a prefix of this blob: start over
            partial.unlink()
            existing = 0
        check_disk_space(store.blobs_dir, size - existing)
        base = reporter.overall_completed
        bar = reporter.bar(label, size, existing)
        last = [0.0, existing]

        def on_bytes(count: int, now_size: int) -> None:
            if bar is not None:
                bar.update(now_size - last[1])
            last[1] = now_size
            reporter.overall_completed = base + now_size
            reporter.emit("downloading", f"Downloading {label}", digest, now_size, size)  # throttled in emit

        try:
            if existing:
                logger.info("Resuming %s at byte %d of %d", label, existing, size)
            # Unbuffered: the sink writes its large buffers with one system call each, no extra copy.
            with (
                open(partial, "ab", buffering=0) as handle,
                HashingWriter(handle, partial, on_bytes, reporter.check_cancel, limit=size) as writer,
            ):
                if writer.size < size:
                    reporter.emit("downloading", f"Downloading {label}", digest, writer.size, size)
                    try:
                        fetcher(writer)
                    except LimitReached:
                        # The source sent more than the manifest declared: the file stops at the declared
                        # size, and the digest check below decides whether those bytes are the blob.
                        logger.warning("%s: the server sent more than the declared %d bytes", label, size)
                writer.flush()
        finally:
            if bar is not None:
                bar.close()
        if writer.size < size:
            raise PullError(
                f"The download of {label} stopped at {format_bytes(writer.size)} of {format_bytes(size)}; "
                "pull again to resume it."
            )
        reporter.emit("verifying", f"Verifying {label}", digest, size, size)
        store.commit_partial(digest, writer.digest)
        reporter.overall_completed = base + size
        return writer.downloaded
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(partial, exc) from exc
        if isinstance(exc, (PullError, StoreError)):
            raise
        raise StoreError(f"Could not write {partial}: {exc}. Check the store's permissions.") from exc
