"""Wire format between the Runner and a worker: one JSON object per line over a socketpair.

See :mod:`mr_notebook.engine.worker` for the messages. This module holds what both sides share:
framing and turning an error message back into the exception class it names.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

from mr_notebook import errors
from mr_notebook.errors import MrNotebookError

#: Host → worker operations that go through the scheduler queue (served one at a time, in order).
QUEUED_OPS = frozenset({"chat", "complete", "embed"})
#: Operations the worker answers at once from its reader thread (vocabulary lookups only).
DIRECT_OPS = frozenset({"tokenize", "detokenize"})
#: Messages can carry many embedding vectors; the host's line buffer must hold the biggest one.
MAX_LINE = 256 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """One message as a newline-terminated line (compact JSON)."""
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def encode_delta(rid: int, text: str) -> bytes:
    """The hot path: one streamed delta without logprobs, several times cheaper than ``encode``."""
    return f'{{"id":{rid:d},"type":"delta","text":{encode_basestring_ascii(text)}}}\n'.encode("ascii")


def decode(line: bytes) -> dict[str, Any]:
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"protocol message is not an object: {line[:80]!r}")
    return data


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The ``error`` field of an error message for ``exc``."""
    name = type(exc).__name__ if isinstance(exc, MrNotebookError) else "InternalError"
    return {"class": name, "message": str(exc) or repr(exc), "param": getattr(exc, "param", None)}


def to_exception(payload: dict[str, Any]) -> MrNotebookError:
    """Rebuild the error a worker reported; unknown classes become a plain ``MrNotebookError``."""
    cls = getattr(errors, str(payload.get("class")), None)
    message = str(payload.get("message", "the worker reported an error"))
    param = payload.get("param")
    if isinstance(cls, type) and issubclass(cls, errors.InvalidRequest):
        return cls(message, param)
    if isinstance(cls, type) and issubclass(cls, MrNotebookError):
        return cls(message)
    return MrNotebookError(message)
