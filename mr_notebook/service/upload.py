"""A GGUF file arriving over HTTP (``POST /models/load``): streamed to a partial file, hashed on the way.

Bytes go to ``uploads/<id>.part`` in the store's home (the blobs' filesystem, so publishing is a rename),
are hashed while they are written, and become a blob only in :meth:`Upload.finish`, after the size, the
announced digest and the GGUF header check. The partial file's lock is held meanwhile, so a ``prune`` in
another process leaves it alone; a partial left by a killed server is deleted by the next ``prune``.
Writes are buffered to about 1 MiB and done in a thread, so the server's loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from filelock import FileLock

from mr_notebook.errors import InvalidModelFile, InvalidRequest, StoreError
from mr_notebook.service.core import in_thread
from mr_notebook.store.files import fsync_dir
from mr_notebook.store.gguf_meta import format_bytes, read_gguf_info
from mr_notebook.store.pull.common import DISK_RESERVE
from mr_notebook.store.records import GGUF_MEDIA_TYPE, ModelFile

if TYPE_CHECKING:
    from mr_notebook.store import ModelRecord, ModelRef, Store

#: Bytes gathered before one write on the thread (fewer, larger writes; the loop only appends to a buffer).
FLUSH_SIZE = 1024 * 1024
GGUF_MAGIC = b"GGUF"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


class Upload:
    """The bytes of one GGUF file for one model name. Nothing is visible in the store before ``finish``."""

    def __init__(self, store: Store, ref: ModelRef, *, size: int | None = None, digest: str | None = None) -> None:
        if digest is not None and (not isinstance(digest, str) or _DIGEST.match(digest) is None):
            raise InvalidRequest("digest must look like sha256:<64 hex digits>, the sha256 of the file.", "digest")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < len(GGUF_MAGIC)):
            raise InvalidRequest("size must be the file's length in bytes.", "size")
        self.store = store
        self.ref = ref
        self.size = size
        self.digest = digest
        self.received = 0
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._checked = False
        self._file: BinaryIO | None = None
        self._lock: FileLock | None = None
        self.path = store.home / "uploads" / f"{uuid.uuid4().hex}.part"

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (written and hashed in a thread, in order; never blocks the loop)."""
        self.received += len(chunk)
        if self.size is not None and self.received > self.size:
            raise InvalidRequest(f"The body is longer than the size announced ({self.size} bytes).", "size")
        self._buffer += chunk
        if not self._checked and len(self._buffer) >= len(GGUF_MAGIC):
            if bytes(self._buffer[: len(GGUF_MAGIC)]) != GGUF_MAGIC:
                raise InvalidModelFile(
                    "This is not a GGUF file (it does not start with 'GGUF'). Upload a .gguf model file, e.g. "
                    "one made by llama.cpp's convert_hf_to_gguf.py."
                )
            self._checked = True
        if len(self._buffer) >= FLUSH_SIZE:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        if data:
            await asyncio.to_thread(self._write, data)

    def _room(self, needed: int) -> None:
        """Keep the pull's reserve free: a client streaming without end must not fill the store's disk."""
        free = shutil.disk_usage(self.path.parent).free
        if needed + DISK_RESERVE > free:
            raise StoreError(
                f"Not enough disk space in {self.store.home} for this upload ({format_bytes(needed)} more "
                f"needed, {format_bytes(free)} free). Free some space (`mr-notebook rm`, `mr-notebook prune`), "
                "then send it again."
            )

    def _write(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._room(self.size if self.size is not None else len(data))  # the whole file when announced
            self._lock = FileLock(str(self.path) + ".lock", timeout=0)
            self._lock.acquire()
            self._file = open(self.path, "wb")  # noqa: SIM115 - kept open across writes, closed in _close
        else:
            self._room(len(data))
        try:
            self._file.write(data)
        except OSError as exc:
            raise StoreError(
                f"Could not write the upload into the store at {self.store.home}: {exc.strerror}."
            ) from exc
        self._hash.update(data)

    async def finish(self) -> ModelRecord:
        """Check size, digest (when announced) and the GGUF header, then publish the model."""
        if self.received < len(GGUF_MAGIC):
            raise InvalidModelFile("The upload is empty or too short to be a GGUF file; send the file's bytes.")
        await self._flush()
        try:
            # Publishing takes the index lock: on a thread of its own, not the shared pool (see core.in_thread).
            return await in_thread(self._publish, None, f"upload {self.ref}")
        finally:
            await self.abort()

    def _publish(self) -> ModelRecord:
        file = self._file
        if file is None:
            raise StoreError("The upload was aborted; send it again.")
        file.flush()
        os.fsync(file.fileno())
        if self.size is not None and self.received != self.size:
            raise InvalidRequest(
                f"The upload ended after {self.received} of the {self.size} bytes announced; send the whole file.",
                "size",
            )
        digest = "sha256:" + self._hash.hexdigest()
        if self.digest is not None and digest != self.digest:
            raise InvalidRequest(
                f"The upload's sha256 is {digest}, not the {self.digest} announced: it was damaged on the way or "
                "the announced digest is of another file. Send it again.",
                "digest",
            )
        read_gguf_info([self.path])  # a damaged header is refused before anything becomes visible
        store = self.store
        with store.lease([digest]):
            with store.blob_lock(digest):
                if store.has_blob(digest):
                    self.path.unlink(missing_ok=True)  # already stored (another name of the same file)
                else:
                    os.replace(self.path, store.blob_path(digest))
                    fsync_dir(store.blobs_dir)
            entry = ModelFile(digest=digest, size=self.received, media_type=GGUF_MEDIA_TYPE, name="model.gguf")
            return store.create_model([self.ref], [entry], source="upload")

    async def abort(self) -> None:
        """Delete what was received (the client went away, or the body was refused); idempotent."""
        self._buffer = bytearray()
        if self._file is not None or self._lock is not None:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        file, self._file = self._file, None
        lock, self._lock = self._lock, None
        if file is not None:
            file.close()
        self.path.unlink(missing_ok=True)
        if lock is not None:
            lock.release()
            Path(lock.lock_file).unlink(missing_ok=True)
