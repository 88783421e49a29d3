"""Anthropic's Messages API: ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (also under ``/anthropic``).

Requests become OpenAI chat bodies (system prompt, text / tool_use / tool_result blocks, tools, tool_choice) and
run through :func:`mr_notebook.api.turns.run_turn`; answers come back as Anthropic content blocks, streamed
with Anthropic's event sequence (message_start, content_block_start/delta/stop, message_delta, message_stop).
The Anthropic SDK sends its key as ``x-api-key``; it is accepted wherever ``Authorization: Bearer`` is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.base import ApiHandler, describe_error
from mr_notebook.api.tool_choice import parse_tools
from mr_notebook.api.turns import (
    Timing,
    TurnEvent,
    TurnRequest,
    close_stream,
    engine_params,
    model_traits,
    run_turn,
    template_messages,
    write_family_error,
)
from mr_notebook.engine import Chunk
from mr_notebook.errors import InvalidRequest, MrNotebookError

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicHandler(ApiHandler):
    """Accepts ``x-api-key`` as the credential; answers errors in Anthropic's shape."""

    async def prepare(self) -> None:  # type: ignore[override]
        # Before the host's authentication reads the header: both hosts accept a bearer credential.
        key = self.request.headers.get("x-api-key", "").strip()
        if key and not self.request.headers.get("Authorization"):
            self.request.headers["Authorization"] = f"Bearer {key}"
        await super().prepare()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_family_error(self, status_code, kwargs, anthropic_error)

    def read_request(self) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        """The body, its model and its messages in OpenAI's shape."""
        body = self.json_body()
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("model is required: a stored model name such as ai/smollm2.", "model")
        return body, model, openai_messages(body)


def _text(content: Any, where: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise InvalidRequest(f"{where} may only hold text blocks here.", where)
            parts.append(block["text"])
        return "".join(parts)
    raise InvalidRequest(f"{where} must be a string or a list of text blocks.", where)


def openai_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Anthropic ``system`` + ``messages`` as OpenAI chat messages (tool_result blocks become tool messages)."""
    out: list[dict[str, Any]] = []
    if body.get("system") is not None:
        out.append({"role": "system", "content": _text(body["system"], "system")})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest('messages must be a non-empty list of {"role": "user", "content": …}.', "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise InvalidRequest(f'{where}.role must be "user" or "assistant".', "messages")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"{where}.content must be a string or a list of content blocks.", "messages")
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and role == "assistant":
                arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
                function = {"name": str(block.get("name", "")), "arguments": arguments}
                calls.append({"id": str(block.get("id", "")), "type": "function", "function": function})
            elif kind == "tool_result" and role == "user":
                result = block.get("content", "")
                text = _text(result, f"{where} tool_result content") if result is not None else ""
                if block.get("is_error"):
                    text = f"Error: {text}"
                out.append({"role": "tool", "tool_call_id": str(block.get("tool_use_id", "")), "content": text})
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning is not sent back to the model (as with Anthropic's own models)
            else:
                raise InvalidRequest(
                    f"{where} has a {kind!r} block; the models served here read text, tool_use and tool_result.",
                    "messages",
                )
        if texts or calls:
            entry: dict[str, Any] = {"role": role, "content": "".join(texts)}
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
    return out


def turn_from(body: dict[str, Any], model: str, messages: list[dict[str, Any]]) -> TurnRequest:
    """The OpenAI body and tool settings of an Anthropic request."""
    tools_in = body.get("tools") or []
    if not isinstance(tools_in, list):
        raise InvalidRequest('tools must be a list of {"name", "description", "input_schema"}.', "tools")
    openai_tools = []
    for i, tool in enumerate(tools_in):
        if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or "input_schema" not in tool:
            raise InvalidRequest(
                f'tools[{i}] must be a client tool like {{"name": "get_weather", "input_schema": {{…}}}}; '
                "server tools (web search, code execution) are not available here.",
                "tools",
            )
        function = {
            "name": tool.get("name"),
            "description": tool.get("description", ""),
            "parameters": tool["input_schema"],
        }
        openai_tools.append({"type": "function", "function": function})
    tools = parse_tools(openai_tools)
    choice_in = body.get("tool_choice") or {"type": "auto"}
    kind = choice_in.get("type") if isinstance(choice_in, dict) else None
    forced: str | None = None
    if kind == "auto" or (kind == "any" and tools) or kind == "none":
        choice = {"auto": "auto" if tools else "none", "any": "required", "none": "none"}[kind]
    elif kind == "tool" and choice_in.get("name") in tools:
        choice, forced = "required", str(choice_in["name"])
    else:
        raise InvalidRequest(
            'tool_choice must be {"type": "auto"}, {"type": "any"}, {"type": "none"} or {"type": "tool", "name": …} '
            "naming one of the tools given.",
            "tool_choice",
        )
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise InvalidRequest("max_tokens is required: a positive integer, e.g. 1024.", "max_tokens")
    thinking = body.get("thinking")
    thinks = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    openai: dict[str, Any] = {
        "messages": messages,
        "max_tokens": max_tokens,
        "chat_template_kwargs": {"enable_thinking": thinks},
    }
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            openai[key] = body[key]
    stops = stop_sequences(body)
    if stops:
        openai["stop"] = stops  # matched by the engine, which says which one ended the answer
    if tools and choice != "none":
        openai["tools"] = openai_tools
    parallel = not (isinstance(choice_in, dict) and choice_in.get("disable_parallel_tool_use") is True)
    return TurnRequest(model, openai, tools, choice, forced, parallel, "split" if thinks else "drop")


def stop_sequences(body: dict[str, Any]) -> list[str]:
    value = body.get("stop_sequences") or []
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidRequest("stop_sequences must be a list of strings.", "stop_sequences")
    return [s for s in value if s]


class MessagesHandler(AnthropicHandler):
    """``POST /v1/messages``."""

    route_name = "anthropic_messages"

    @tornado.web.authenticated
    async def post(self) -> None:
        body, model, messages = self.read_request()
        turn = turn_from(body, model, messages)
        streaming = body.get("stream", False)
        if not isinstance(streaming, bool):
            raise InvalidRequest("stream must be true or false.", "stream")
        traits = await model_traits(self.ctx, self.settings, model)
        params = engine_params(self.ctx, turn, traits)
        runner = await self.ctx.ready_runner()
        stream = runner.chat(model, template_messages(messages), params)
        self.message_id = "msg_" + uuid.uuid4().hex[:24]
        timing = Timing(started=self.started_at)
        events = run_turn(stream, turn, traits, timing)
        await self.run_cancellable(self.answer(model, stream, events, timing, streaming))

    async def answer(
        self,
        model: str,
        stream: AsyncIterator[Chunk],
        events: AsyncIterator[TurnEvent],
        timing: Timing,
        streaming: bool,
    ) -> None:
        try:
            if streaming:
                await self._stream(model, events, timing)
            else:
                await self._whole(model, events)
        except StreamClosedError:
            self.mark_client_gone()
        finally:
            await close_stream(stream)

    def _shell(self, model: str) -> dict[str, Any]:
        return {"id": self.message_id, "type": "message", "role": "assistant", "model": model, "content": []}

    async def _whole(self, model: str, events: AsyncIterator[TurnEvent]) -> None:
        thinking, text, blocks = "", "", []
        done: TurnEvent | None = None
        async for event in events:
            if event.kind == "reasoning":
                thinking += event.text
            elif event.kind == "content":
                text += event.text
            elif event.kind == "call" and event.call is not None:
                blocks.append({"type": "tool_use", "id": "toolu_" + event.call.id[5:], "name": event.call.name,
                               "input": event.call.arguments})  # fmt: skip
            elif event.kind == "done":
                done = event
        content = [{"type": "thinking", "thinking": thinking, "signature": ""}] if thinking else []
        content += [{"type": "text", "text": text}] if text or not blocks else []
        answer = self._shell(model)
        answer.update(content=content + blocks, **self._ending(done))
        self.write_json(answer)

    @staticmethod
    def _ending(done: TurnEvent | None) -> dict[str, Any]:
        """``stop_reason``, ``stop_sequence`` and ``usage`` of a finished answer."""
        finish = done.finish_reason if done is not None else None
        stop_sequence = done.stop_sequence if done is not None else None
        if stop_sequence is not None:
            reason = "stop_sequence"
        else:
            reason = {"tool_calls": "tool_use", "length": "max_tokens"}.get(finish or "", "end_turn")
        usage = done.usage if done is not None else None
        return {
            "stop_reason": reason,
            "stop_sequence": stop_sequence,
            "usage": {
                "input_tokens": usage.prompt_tokens if usage else 0,
                "output_tokens": usage.completion_tokens if usage else 0,
            },
        }

    async def _event(self, name: str, data: dict[str, Any]) -> None:
        self.write(f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n")
        await self.flush()

    async def _stream(self, model: str, events: AsyncIterator[TurnEvent], timing: Timing) -> None:
        try:
            first: TurnEvent | None = await events.__anext__()
        except StopAsyncIteration:
            first = None
        # Errors before the first token were raised as a real HTTP status; from here on it is 200.
        self.start_stream("text/event-stream")
        start = self._shell(model)
        # The engine said how long the prompt is when the request got its slot, before the first event.
        input_tokens = timing.prompt_tokens or 0
        start.update(stop_reason=None, stop_sequence=None, usage={"input_tokens": input_tokens, "output_tokens": 0})
        await self._event("message_start", {"type": "message_start", "message": start})
        await self._event("ping", {"type": "ping"})
        index, open_kind = -1, None
        done: TurnEvent | None = None

        async def open_block(kind: str, block: dict[str, Any]) -> None:
            nonlocal index, open_kind
            await close_block()
            index, open_kind = index + 1, kind
            await self._event(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
            )

        async def close_block() -> None:
            nonlocal open_kind
            if open_kind is not None:
                await self._event("content_block_stop", {"type": "content_block_stop", "index": index})
                open_kind = None

        async def delta(payload: dict[str, Any]) -> None:
            await self._event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": payload})

        try:
            event = first
            while event is not None:
                if event.kind == "reasoning":
                    if open_kind != "thinking":
                        await open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                    await delta({"type": "thinking_delta", "thinking": event.text})
                elif event.kind == "content" and event.text:
                    if open_kind != "text":
                        await open_block("text", {"type": "text", "text": ""})
                    await delta({"type": "text_delta", "text": event.text})
                elif event.kind == "call" and event.call is not None:
                    block = {
                        "type": "tool_use",
                        "id": "toolu_" + event.call.id[5:],
                        "name": event.call.name,
                        "input": {},
                    }
                    await open_block("tool_use", block)
                    await delta({"type": "input_json_delta", "partial_json": event.call.arguments_json()})
                elif event.kind == "done":
                    done = event
                try:
                    event = await events.__anext__()
                except StopAsyncIteration:
                    event = None
            if index < 0:  # nothing at all: still one (empty) text block, as Anthropic sends
                await open_block("text", {"type": "text", "text": ""})
            await close_block()
            ending = self._ending(done)
            await self._event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": ending["stop_reason"], "stop_sequence": ending["stop_sequence"]},
                    "usage": ending["usage"],
                },
            )
            await self._event("message_stop", {"type": "message_stop"})
        except MrNotebookError as exc:  # e.g. the worker crashed mid-stream: Anthropic's error event
            status, body = describe_error(exc, 500, self.request.method or "", self.request.path)
            await self._event("error", anthropic_error(status, body["error"]["message"]))


class CountTokensHandler(AnthropicHandler):
    """``POST /v1/messages/count_tokens``: the prompt's length in the model's own template and tokenizer."""

    route_name = "anthropic_count_tokens"

    @tornado.web.authenticated
    async def post(self) -> None:
        body, model, messages = self.read_request()
        turn = turn_from({**body, "max_tokens": 1}, model, messages)
        turn.choice = "auto" if turn.choice == "required" else turn.choice  # no grammar needed to count
        params = engine_params(self.ctx, turn)
        runner = await self.ctx.ready_runner()
        # The engine renders the template and counts the prompt when it runs it; one token is the least it runs.
        stream = runner.chat(model, template_messages(messages), params)
        tokens = 0
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.prompt_tokens
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        self.write_json({"input_tokens": tokens})
