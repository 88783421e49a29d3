"""The blob sink: sha256 and disk writes on a thread of their own, overlapped with the network receive.

On loopback and fast links a pull is CPU-bound: receiving (a kernel → user copy), sha256 and the write
(a user → page-cache copy) each cost about as much as the others. ``hashlib`` and file writes release the
GIL, so a *disk thread* writes one buffer while the caller's thread hashes it and then receives the next:
two cores work at once, with the work split about evenly (receiving straight into our buffer is the
cheapest step, so it goes with hashing). Received bytes travel in a few large reusable buffers (no
allocation and no fresh page faults per read); the queue between the threads is bounded, so a slow disk
slows the receive down instead of filling memory.

A third thread, asleep nearly all the time, calls ``fdatasync`` every :data:`SYNC_EVERY` bytes: writeback
runs during the download, and the fsync that publishes the blob (:meth:`Store.commit_partial`) finds little
left to flush. Its errors (an ``EIO``) are raised like write errors: a failed sync is reported only once.

Bytes received are handed to the disk thread at least every :data:`HANDOFF_SECONDS`, so on a slow link the
partial file, the progress events and cancellation keep up with the network.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

BUFFER_SIZE = 4 * 1024 * 1024
BUFFERS = 4  # buffers in flight: enough to ride out a slow write, little memory (16 MiB)
SYNC_EVERY = 32 * 1024 * 1024
HANDOFF_SECONDS = 0.05
_DIRECT_WRITE = 1024 * 1024
_SYNC = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
_UNSYNCABLE = {errno.EINVAL, errno.ENOTSUP, errno.EROFS}  # a device file (tests use /dev/full), a pipe

Read = Callable[[memoryview], int]
_Item = tuple[memoryview | bytes, bytearray | None]


class LimitReached(Exception):
    """The source offered more bytes than the blob's declared size; what fits was kept, the rest refused."""


class HashingWriter:
    """The file object fetchers write into: appends to the partial file, hashes, reports, cancels.

    ``limit`` is the blob's declared size: the file never grows past it. ``receive`` stops reading there;
    ``write`` keeps what fits and raises :class:`LimitReached`, the only way to stop a library that pushes
    bytes (a registry that declares 1 KiB and streams gigabytes would otherwise fill the disk first).

    ``write`` (for libraries that push bytes, like huggingface_hub's ``http_get``) and ``receive`` (for
    readers that fill buffers, like http.client's ``readinto``) both queue the bytes for the disk thread;
    ``tell``, ``seek``, ``flush`` and ``digest`` wait until it has written everything queued. Use it as a
    context manager: leaving it writes what was received (a cancelled pull keeps every byte it got) and
    stops the threads. Errors of the disk thread (``ENOSPC``) are raised in the caller's thread.
    """

    def __init__(
        self,
        handle: io.FileIO,
        path: Path,
        on_bytes: Callable[[int, int], None],
        check_cancel: Callable[[], None],
        limit: int | None = None,
    ) -> None:
        self._handle = handle
        self.limit = limit
        self._path = path
        self._on_bytes = on_bytes
        self._check_cancel = check_cancel
        self._hash = hashlib.sha256()
        self.size = 0  # bytes received (written or queued); equals the file's size whenever drained
        self.downloaded = 0
        self._rehash(path.stat().st_size)
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=BUFFERS)
        self._free: queue.Queue[bytearray] = queue.Queue()
        self._buffers = 0
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._sync_wanted = threading.Event()
        self._closing = False
        self._pending: bytearray | None = None  # write()'s buffer being gathered, not queued yet
        self._pending_size = 0
        self._pending_since = 0.0

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
        if kind is None:
            self._raise_error()

    def _rehash(self, upto: int) -> None:
        """Hash the first ``upto`` bytes already on disk (a resumed download's prefix)."""
        self._hash = hashlib.sha256()
        with open(self._path, "rb") as existing:
            remaining = upto
            while remaining > 0 and (chunk := existing.read(min(remaining, 1 << 20))):
                self._hash.update(chunk)
                remaining -= len(chunk)
        self.size = upto - remaining

    # ------------------------------------------------------------------ the caller's thread

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_cancel()
        self._raise_error()
        self._start()
        size = memoryview(data).nbytes
        if self.limit is not None and self.size + size > self.limit:
            room = max(self.limit - self.size, 0)
            if room:
                self.write(memoryview(data).cast("B")[:room])
            raise LimitReached(f"{self._path.name}: more bytes than the declared size {self.limit}")
        if isinstance(data, bytes) and size >= _DIRECT_WRITE:
            # A large bytes object (huggingface_hub sends 10 MiB) cannot change under the disk thread: no copy.
            self._hand_off()
            self._queue_and_hash(data, None)
        else:
            # Small pieces (httpx yields 64 KiB) are gathered into a buffer: one disk-thread wake-up per
            # piece would leave it waiting for the GIL most of the time.
            view = memoryview(data).cast("B")
            while view:
                if self._pending is None:
                    self._pending, self._pending_size, self._pending_since = self._free_buffer(), 0, time.monotonic()
                count = min(len(view), BUFFER_SIZE - self._pending_size)
                self._pending[self._pending_size : self._pending_size + count] = view[:count]
                self._pending_size += count
                view = view[count:]
                if self._pending_size == BUFFER_SIZE or time.monotonic() - self._pending_since >= HANDOFF_SECONDS:
                    self._hand_off()
        self._accepted(size)
        return size

    def receive(self, read: Read) -> int:
        """Fill buffers with ``read`` (``readinto``-like, 0 at the end) until the end; returns bytes read."""
        self._start()
        total = 0
        while True:
            self._check_cancel()
            self._raise_error()
            room = BUFFER_SIZE if self.limit is None else min(BUFFER_SIZE, self.limit - self.size)
            if room <= 0:
                return total  # the declared size is reached: whatever else the source has is not read
            buffer = self._free_buffer()
            view = memoryview(buffer)[:room]
            filled, ended = 0, False
            started = time.monotonic()
            try:
                while filled < room and time.monotonic() - started < HANDOFF_SECONDS:
                    count = read(view[filled:])
                    if not count:
                        ended = True
                        break
                    filled += count
            finally:
                # Bytes read before a dropped connection are good: keep them, the retry resumes after them.
                if filled:
                    self._queue_and_hash(view[:filled], buffer)
                    self._accepted(filled)
                    total += filled
                else:
                    self._free.put(buffer)
            if ended:
                return total

    def tell(self) -> int:
        self._drain()
        return self.size

    def seek(self, offset: int, whence: int = 0) -> int:
        """Only rewinding is meaningful: a server that ignored our Range makes the fetcher start over."""
        self._drain()
        target = offset if whence == 0 else self.size + offset
        if target < self.size:
            self._handle.truncate(target)
            self._rehash(target)
            self._on_bytes(0, self.size)
        return self.size

    def truncate(self, size: int | None = None) -> int:
        return self.seek(self.size if size is None else size)

    def restart(self) -> None:
        self.seek(0)

    def flush(self) -> None:
        self._drain()

    @property
    def digest(self) -> str:
        self._drain()
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        """Write what is queued, then stop the threads (errors are kept for :meth:`_raise_error`)."""
        if not self._threads:
            return
        self._hand_off()
        self._queue.join()
        self._closing = True
        self._queue.put(None)
        self._sync_wanted.set()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _accepted(self, count: int) -> None:
        self.size += count
        self.downloaded += count
        self._on_bytes(count, self.size)

    def _free_buffer(self) -> bytearray:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._buffers <= BUFFERS:  # one more than the queue holds: one is always being filled
                self._buffers += 1
                return bytearray(BUFFER_SIZE)
        return self._free.get()

    def _hand_off(self) -> None:
        """Queue the buffer ``write`` is gathering."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._queue_and_hash(memoryview(pending)[: self._pending_size], pending)

    def _queue_and_hash(self, data: memoryview | bytes, buffer: bytearray | None) -> None:
        """Queue ``data`` for the disk thread, then hash it here while the disk thread writes it.

        The disk thread may recycle ``buffer`` before the hash is done, but only this thread refills
        buffers, and it is busy hashing this one: nothing overwrites it meanwhile.
        """
        self._queue.put((data, buffer))
        self._hash.update(data)

    def _drain(self) -> None:
        self._hand_off()
        if self._threads:
            self._queue.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _start(self) -> None:
        if self._threads:
            return
        self._closing = False
        self._threads = [
            threading.Thread(target=self._disk_loop, name="mr-notebook-blob-writer", daemon=True),
            threading.Thread(target=self._sync_loop, name="mr-notebook-blob-sync", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ the helper threads

    def _disk_loop(self) -> None:
        unsynced = 0
        while (item := self._queue.get()) is not None:
            data, buffer = item
            try:
                if self._error is None:
                    view = memoryview(data)
                    while view:
                        written = self._handle.write(view)
                        if not written:  # only a non-blocking file could say so; ours never is
                            raise OSError(errno.EIO, f"short write to {self._path}")
                        view = view[written:]
                    unsynced += len(data)
                    if unsynced >= SYNC_EVERY:
                        unsynced = 0
                        self._sync_wanted.set()
            except Exception as exc:  # handed over to the caller's thread, which raises it
                self._error = exc
            finally:
                if buffer is not None:
                    self._free.put(buffer)
                self._queue.task_done()
        self._queue.task_done()

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._closing:
                return
            try:
                _SYNC(self._handle.fileno())
            except OSError as exc:
                if exc.errno not in _UNSYNCABLE and self._error is None:
                    self._error = exc
                return
