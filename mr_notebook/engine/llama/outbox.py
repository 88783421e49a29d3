"""What the scheduler sends to the host: written once per scheduler iteration, stream text at most 25 times a second."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mr_notebook.engine.llama.jobs import Choice, Job
from mr_notebook.engine.protocol import encode, encode_delta

Send = Callable[[dict[str, Any] | bytes], None]

#: A stream's text is sent at most this often (seconds; its first token at once): 25 updates a second look
#: continuous to a reader, and every message costs the host, the client and the notebook's renderer CPU that a
#: 2-core machine takes from the decode threads (a message per token cost 11% of the tokens at one stream).
COALESCE = 0.04


class Outbox:
    """Messages of one scheduler iteration, written to the host together (one syscall, one host wake-up)."""

    def __init__(self, transmit: Send) -> None:
        self._transmit = transmit
        self._messages: list[bytes] = []

    def send(self, message: dict[str, Any] | bytes) -> None:
        self._messages.append(message if isinstance(message, bytes) else encode(message))

    def flush(self) -> None:
        if self._messages:
            data, self._messages = b"".join(self._messages), []
            self._transmit(data)

    def emit(self, job: Job, choice: Choice, text: str, entry: dict[str, Any] | None) -> None:
        """New text of one choice: with logprobs one message per token, else held until ``COALESCE`` passed."""
        if entry is not None:
            index = {"index": choice.index} if job.n > 1 else {}
            self.send({"id": job.rid, "type": "delta", "text": choice.held + text, "logprobs": [entry], **index})
            choice.held = ""
            return
        if not text:
            return
        choice.held += text
        now = time.perf_counter()
        if now - choice.sent_at >= COALESCE:  # always true for the first token
            self.text(job, choice)
            choice.sent_at = now

    def text(self, job: Job, choice: Choice) -> None:
        """Send what ``choice`` holds."""
        if job.n > 1:
            self.send({"id": job.rid, "type": "delta", "text": choice.held, "index": choice.index})
        else:
            self.send(encode_delta(job.rid, choice.held))
        choice.held = ""
