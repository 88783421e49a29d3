"""A GGUF file arriving over HTTP (``POST /models/load``): streamed to a partial file, hashed on the way."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mr_notebook.store import ModelRecord


class Upload:
    """The bytes of one GGUF file for one model name. Nothing is visible in the store before ``finish``."""

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (written and hashed in a thread, in order; never blocks the loop)."""
        raise NotImplementedError

    async def finish(self) -> ModelRecord:
        """Check size, digest (when announced) and the GGUF header, then publish the model."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Delete what was received (the client went away, or the body was refused)."""
        raise NotImplementedError
