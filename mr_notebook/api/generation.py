"""Chat and text completions: one engine stream, answered as OpenAI JSON or Server-Sent Events.

Streams follow what the OpenAI SDK parses: a first chunk with the role, content deltas (flushed one by one), a
chunk with ``finish_reason``, an optional usage chunk with empty choices, then ``data: [DONE]``. Closing the
engine stream on every path (client gone, error, done) is what cancels unfinished generation in the worker.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.base import ApiHandler, describe_error
from mr_notebook.api.openai_routes import body_model, include_usage, optional_bool
from mr_notebook.api.tools import ToolCall
from mr_notebook.api.turns import (
    ModelTraits,
    TurnEvent,
    TurnRequest,
    close_stream,
    engine_params,
    model_traits,
    openai_turn,
    run_turn,
    template_messages,
)
from mr_notebook.engine import Chunk, GenerationParams, Usage, collect
from mr_notebook.errors import MrNotebookError
from mr_notebook.store import parse_ref

_SLOT = "\x00mr-notebook-delta\x00"
_SLOT_JSON = json.dumps(_SLOT)


class _Tap:
    """Passes chunks through, noting when the first and last arrived and the final usage."""

    def __init__(self, stream: AsyncIterator[Chunk]) -> None:
        self.stream = stream
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __aiter__(self) -> _Tap:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await self.stream.__anext__()
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        if chunk.usage is not None:
            self.prompt_tokens = chunk.usage.prompt_tokens
            self.completion_tokens = chunk.usage.completion_tokens
        return chunk

    async def close(self) -> None:
        await close_stream(self.stream)


class GenerationHandler(ApiHandler):
    """Shared machinery of chat and text completions."""

    object_name = "chat.completion"
    id_prefix = "chatcmpl-"

    def params(self, body: dict[str, Any]) -> GenerationParams:
        params = GenerationParams.from_request(body)
        cap = self.ctx.limits.max_tokens
        if cap is not None and (params.max_tokens is None or params.max_tokens > cap):
            params.max_tokens = cap
        return params

    def opening_choice(self) -> dict[str, Any] | None:
        """The first streamed choice, before any text (chat: the role)."""
        return None

    def delta_choice(self, chunk: Chunk) -> dict[str, Any]:
        raise NotImplementedError

    def finish_choice(self, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def whole_choice(
        self, text: str, finish_reason: str | None, logprobs: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    async def respond(self, model: str, stream: AsyncIterator[Chunk], *, streaming: bool, usage: bool) -> None:
        """Answer from the engine stream, closing it on every path (which cancels unfinished work)."""
        tap = _Tap(stream)
        try:
            if streaming:
                await self._stream(model, tap, usage)
            else:
                result = await collect(tap)
                self.write_json(
                    self._envelope(
                        model,
                        self.object_name,
                        [self.whole_choice(result.text, result.finish_reason, result.logprobs)],
                        usage=result.usage.to_json(),
                    )
                )
            self._record(model, tap)
        finally:
            await tap.close()

    def _envelope(self, model: str, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": obj,
            "created": self._created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }

    async def _stream(self, model: str, tap: _Tap, usage: bool) -> None:
        try:
            first: Chunk | None = await tap.__anext__()
        except StopAsyncIteration:
            first = None
        # Errors before the first token were raised above as a proper HTTP status; from here on it is 200.
        self.start_stream("text/event-stream")
        chunk_object = self.object_name + ".chunk" if self.object_name == "chat.completion" else self.object_name
        extra = {"usage": None} if usage else {}

        def event(choices: list[dict[str, Any]], **more: Any) -> str:
            return json.dumps(self._envelope(model, chunk_object, choices, **{**extra, **more}))

        # Text deltas are the hot path (one per token): render the envelope once, splice each text in.
        head, tail = event([self.delta_choice(Chunk(text=_SLOT))]).split(_SLOT_JSON)
        finish_reason: str | None = None
        try:
            opening = self.opening_choice()
            if opening is not None:
                self.write(f"data: {event([opening])}\n\n")  # flushed with the first delta
            chunk = first
            while chunk is not None:
                if chunk.logprobs:
                    await self.send_event(event([self.delta_choice(chunk)]))
                elif chunk.text:
                    await self.send_event(head + json.dumps(chunk.text) + tail)
                if chunk.finish_reason is not None:
                    finish_reason = chunk.finish_reason
                try:
                    chunk = await tap.__anext__()
                except StopAsyncIteration:
                    chunk = None
            await self.send_event(event([self.finish_choice(finish_reason)]))
            if usage:
                await self.send_event(
                    event(
                        [],
                        usage={
                            "prompt_tokens": tap.prompt_tokens,
                            "completion_tokens": tap.completion_tokens,
                            "total_tokens": tap.prompt_tokens + tap.completion_tokens,
                        },
                    )
                )
            await self.send_event("[DONE]")
        except StreamClosedError:
            self.mark_client_gone()
        except MrNotebookError as exc:  # e.g. the worker crashed mid-stream: tell the client in the stream
            await self.stream_error(exc)

    async def stream_error(self, exc: MrNotebookError) -> None:
        _, body = describe_error(exc, 500, self.request.method or "", self.request.path)
        try:
            await self.send_event(json.dumps(body))
        except StreamClosedError:
            self.mark_client_gone()

    def _record(self, model: str, tap: _Tap) -> None:
        if tap.first_at is None or self.client_gone:
            return
        try:
            label = str(parse_ref(model))  # one series per model, however it was spelled
        except ValueError:
            label = model
        self.ctx.metrics.generation(
            label,
            prompt_tokens=tap.prompt_tokens,
            completion_tokens=tap.completion_tokens,
            ttft=tap.first_at - self.started_at,
            duration=(tap.last_at or tap.first_at) - tap.first_at,
        )

    def begin(self) -> None:
        self._id = self.id_prefix + uuid.uuid4().hex[:24]
        self._created = int(time.time())


class ChatCompletionsHandler(GenerationHandler):
    """Chat completions with tools, tool choice and reasoning split (see :mod:`mr_notebook.api.turns`)."""

    route_name = "chat_completions"

    @tornado.web.authenticated
    async def post(self, path_model: str | None = None) -> None:
        self.begin()
        body = self.json_body()
        model = body_model(body, path_model)
        streaming, usage = optional_bool(body, "stream"), include_usage(body)
        turn = openai_turn(model, body)
        traits = await model_traits(self.ctx, self.settings, model)
        params = engine_params(self.ctx, turn, traits)
        runner = await self.ctx.ready_runner()
        stream = runner.chat(model, template_messages(body.get("messages")), params)
        await self.run_cancellable(self.answer(model, stream, turn, traits, streaming=streaming, usage=usage))

    async def answer(
        self,
        model: str,
        stream: AsyncIterator[Chunk],
        turn: TurnRequest,
        traits: ModelTraits,
        *,
        streaming: bool,
        usage: bool,
    ) -> None:
        tap = _Tap(stream)
        try:
            events = run_turn(tap, turn, traits)
            if streaming:
                await self._stream_turn(model, tap, events, usage)
            else:
                await self._whole_turn(model, events)
            self._record(model, tap)
        finally:
            await tap.close()

    async def _whole_turn(self, model: str, events: AsyncIterator[TurnEvent]) -> None:
        answers: dict[int, _Answer] = {}
        used = Usage()
        async for event in events:
            if event.kind == "done":
                used = event.usage or used
                continue
            answer = answers.setdefault(event.index, _Answer())
            if event.logprobs is not None:
                answer.logprobs = (answer.logprobs or []) + event.logprobs
            if event.kind == "content":
                answer.content.append(event.text)
            elif event.kind == "reasoning":
                answer.reasoning.append(event.text)
            elif event.kind == "call" and event.call is not None:
                answer.calls.append(_call_json(event.call))
            elif event.kind == "finish":
                answer.finish_reason = event.finish_reason
        choices = [answers[index].choice(index) for index in sorted(answers)]
        self.write_json(self._envelope(model, self.object_name, choices, usage=used.to_json()))

    async def _stream_turn(self, model: str, tap: _Tap, events: AsyncIterator[TurnEvent], usage: bool) -> None:
        try:
            first: TurnEvent | None = await events.__anext__()
        except StopAsyncIteration:
            first = None
        # Errors before the first token were raised above as a proper HTTP status; from here on it is 200.
        self.start_stream("text/event-stream")
        extra = {"usage": None} if usage else {}

        def event(delta: dict[str, Any], finish_reason: str | None = None, index: int = 0, **more: Any) -> str:
            choice = {
                "index": index,
                "delta": delta,
                "logprobs": more.pop("logprobs", None),
                "finish_reason": finish_reason,
            }
            return json.dumps(self._envelope(model, "chat.completion.chunk", [choice], **{**extra, **more}))

        # Text deltas are the hot path (one per token): render the envelope once, splice each text in.
        head, tail = event({"content": _SLOT}).split(_SLOT_JSON)
        opened: set[int] = set()
        calls_of: dict[int, int] = {}  # tool calls sent so far, per choice
        try:
            current = first
            while current is not None:
                i = current.index
                if current.kind != "done" and i not in opened:  # each choice opens with the role
                    opened.add(i)
                    self.write(f"data: {event({'role': 'assistant', 'content': ''}, index=i)}\n\n")
                if current.kind == "content" and (current.logprobs or i):
                    logprobs = {"content": current.logprobs} if current.logprobs else None
                    await self.send_event(event({"content": current.text}, index=i, logprobs=logprobs))
                elif current.kind == "content":
                    await self.send_event(head + json.dumps(current.text) + tail)
                elif current.kind == "reasoning":
                    await self.send_event(event({"reasoning_content": current.text}, index=i))
                elif current.kind == "call" and current.call is not None:
                    # OpenAI's shape: the first chunk of a call names it, the next ones carry argument text.
                    n = calls_of.get(i, 0)
                    opening = {**_call_json(current.call), "index": n}
                    opening["function"] = {"name": current.call.name, "arguments": ""}
                    await self.send_event(event({"tool_calls": [opening]}, index=i))
                    fragment = {"index": n, "function": {"arguments": current.call.arguments_json()}}
                    await self.send_event(event({"tool_calls": [fragment]}, index=i))
                    calls_of[i] = n + 1
                elif current.kind == "finish":
                    await self.send_event(event({}, current.finish_reason, index=i))
                elif usage:  # done
                    used = current.usage or Usage()
                    choices_free = self._envelope(model, "chat.completion.chunk", [], usage=used.to_json())
                    await self.send_event(json.dumps(choices_free))
                try:
                    current = await events.__anext__()
                except StopAsyncIteration:
                    current = None
            await self.send_event("[DONE]")
        except StreamClosedError:
            self.mark_client_gone()
        except MrNotebookError as exc:  # e.g. the worker crashed mid-stream: tell the client in the stream
            await self.stream_error(exc)


class _Answer:
    """One choice of a whole (not streamed) chat completion, as its events arrive."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = None
        self.finish_reason: str | None = None

    def choice(self, index: int) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not self.calls else None,
            "refusal": None,
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = self.calls
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.logprobs is not None else None,
            "finish_reason": self.finish_reason,
        }


def _call_json(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments_json()}}
