"""What the engine hands back: streamed chunks, whole completions, embeddings, loaded-model status."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Usage:
    """Token counts of one request (OpenAI's ``usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Prompt tokens reused from a cached prefix instead of evaluated (OpenAI's ``cached_tokens``).
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class Chunk:
    """One streamed delta; ``finish_reason`` and ``usage`` are set on the last chunk only."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    #: OpenAI ``logprobs.content`` entries for this delta, when the request asked for logprobs.
    logprobs: list[dict[str, Any]] | None = None
    #: The choice this chunk belongs to (``n`` > 1). Then each choice ends with a chunk carrying its own
    #: ``finish_reason``, and the last chunk carries only ``usage`` (the sum over choices).
    index: int = 0
    #: On the last chunk: the stop string that ended the answer, when one did (Anthropic's ``stop_sequence``).
    stop_sequence: str | None = None
    #: The prompt's length in tokens, known once the request has its slot (Anthropic's ``message_start``
    #: reports it before the answer); None where the engine cannot tell (remote engines).
    prompt_tokens: int | None = None


@dataclass
class Completion:
    """A whole answer, built from a stream by :func:`collect`."""

    text: str
    finish_reason: str | None
    usage: Usage
    logprobs: list[dict[str, Any]] | None = None
    #: The stop string that ended the answer, when one did.
    stop_sequence: str | None = None


async def collect(stream: AsyncIterator[Chunk]) -> Completion:
    """Drain a stream into one :class:`Completion` (the non-streaming form of every operation)."""
    parts: list[str] = []
    logprobs: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    stop_sequence: str | None = None
    usage = Usage()
    async for chunk in stream:
        parts.append(chunk.text)
        if chunk.logprobs is not None:
            logprobs = (logprobs or []) + chunk.logprobs
        if chunk.finish_reason is not None:
            finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
        stop_sequence = chunk.stop_sequence or stop_sequence
    return Completion("".join(parts), finish_reason, usage, logprobs, stop_sequence)


async def collect_choices(stream: AsyncIterator[Chunk]) -> list[Completion]:
    """Drain an ``n`` > 1 stream into one Completion per choice (each carrying the request's usage)."""
    parts: dict[int, list[str]] = {}
    logprobs: dict[int, list[dict[str, Any]]] = {}
    finish: dict[int, str | None] = {}
    usage = Usage()
    async for chunk in stream:
        parts.setdefault(chunk.index, []).append(chunk.text)
        if chunk.logprobs is not None:
            logprobs.setdefault(chunk.index, []).extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            finish[chunk.index] = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    return [
        Completion("".join(parts.get(i, [])), finish.get(i), usage, logprobs.get(i))
        for i in range(max([*parts, *finish], default=-1) + 1)
    ]


@dataclass
class EmbeddingResult:
    """One vector per input, in input order."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass
class ModelStatus:
    """One loaded model, as ``ps`` shows it."""

    model: str
    id: str
    pid: int
    memory: int
    context_size: int
    keep_alive: float
    expires_at: float | None
    loaded_at: float
    last_used: float
    in_flight: int
    queued: int
    #: CPU threads of the worker and the sequences it runs at once.
    threads: int = 0
    parallel: int = 1
    #: Share of the decode batch filled lately (0 when idle).
    batch_fill: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
