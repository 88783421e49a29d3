"""Progress of a service call as NDJSON: one relay for pulls (``/models/create``, Ollama's ``/api/pull``) and loads.

The service calls a progress callback on the loop (pull events are throttled once, in the store's pull); the
relay hands each event to an async writer in order while the call runs, then returns the call's result. The
writer decides the line shape and what to hold back (a pull that fails while resolving still gets a real
HTTP status when nothing has been written yet).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mr_notebook.api.base import ApiHandler, describe_error
from mr_notebook.errors import MrNotebookError
from mr_notebook.service import Progress, ProgressCallback

T = TypeVar("T")


async def relay(run: Callable[[ProgressCallback], Awaitable[T]], write: Callable[[Progress], Awaitable[None]]) -> T:
    """``await run(progress)``, awaiting ``write(event)`` for each event as it comes; cancelling cancels the call."""
    events: asyncio.Queue[Progress] = asyncio.Queue()
    job = asyncio.ensure_future(run(events.put_nowait))
    try:
        while not job.done() or not events.empty():
            if events.empty():
                getter = asyncio.ensure_future(events.get())
                waiting: set[asyncio.Future[Any]] = {getter, job}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    continue
                event = getter.result()
            else:
                event = events.get_nowait()
            await write(event)
        return job.result()
    finally:
        if not job.done():
            job.cancel()  # the client went away: a pull stops (its partial file kept), a load goes on
            await asyncio.wait({job})


def progress_line(event: Progress) -> dict[str, Any]:
    """Docker Model Runner's progress line (``total``/``pulled`` count bytes of a pull; 0 for a load)."""
    return {
        "type": "progress",
        "status": event.status,
        "message": event.message,
        "total": event.overall_total,
        "pulled": event.overall_completed,
        "layer": {"id": event.digest, "size": event.total, "current": event.completed},
    }


class NdjsonWriter:
    """Lines of one NDJSON answer; the headers go out with the first line (until then errors keep their status)."""

    def __init__(self, handler: ApiHandler) -> None:
        self.handler = handler

    @property
    def started(self) -> bool:
        return bool(self.handler._headers_written)

    async def line(self, data: dict[str, Any]) -> None:
        if not self.started:
            self.handler.start_stream("application/x-ndjson")
        self.handler.write(json.dumps(data) + "\n")
        await self.handler.flush()

    async def error(self, exc: MrNotebookError) -> None:
        """A failure after the first line: an error line in OpenAI's error shape (the status was sent)."""
        _, body = describe_error(exc, 500, self.handler.request.method or "", self.handler.request.path)
        await self.line({"type": "error", "message": str(exc), "error": body["error"]})
