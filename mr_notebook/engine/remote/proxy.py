"""OpenAI answers of a remote engine as the Runner's :class:`Chunk` stream, and requests the other way.

The API layer (OpenAI, Ollama and Anthropic routes) turns Chunks into its own protocol and parses tool calls
and reasoning out of the text. So what the engine sends structured is written back as text in the forms that
parser reads: ``reasoning_content`` between ``<think>`` tags, ``tool_calls`` as Hermes ``<tool_call>`` blocks
(the remote traits say "hermes"). One parser then serves local and remote models alike.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from mr_notebook.engine.params import GenerationParams
from mr_notebook.engine.results import Chunk, Usage
from mr_notebook.errors import RemoteEngineError

#: How remote tool calls are spelled for the API layer's parser (tools.Splitter's "hermes" family).
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def request_params(params: GenerationParams) -> dict[str, Any]:
    """The OpenAI fields of ``params`` (top_k, min_p … are llama.cpp's and not every engine accepts them)."""
    body: dict[str, Any] = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
    }
    optional = {
        "max_tokens": params.max_tokens,
        "seed": params.seed,
        "stop": params.stop or None,
        "response_format": params.response_format,
        "logit_bias": params.logit_bias or None,
        "tools": params.tools,
        "tool_choice": params.tool_choice,
        "parallel_tool_calls": params.parallel_tool_calls,
        "chat_template_kwargs": params.chat_template_kwargs or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if params.logprobs:
        body["logprobs"] = True
        if params.top_logprobs is not None:
            body["top_logprobs"] = params.top_logprobs
    if params.n > 1:
        body["n"] = params.n
    return body


def openai_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as OpenAI wants them: tool-call arguments are JSON *strings* (our templates take objects)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and not isinstance(function.get("arguments"), str):
                    call = {**call, "function": {**function, "arguments": json.dumps(function.get("arguments"))}}
                fixed.append(call)
            message = {**message, "tool_calls": fixed}
        out.append(message)
    return out


@dataclass
class _Choice:
    thinking: bool = False
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish: str | None = None


def _call_text(calls: dict[int, dict[str, str]]) -> str:
    parts = []
    for _, call in sorted(calls.items()):
        try:
            arguments: Any = json.loads(call.get("arguments") or "{}")
        except ValueError:
            arguments = call.get("arguments")  # left as text: the parser reports it as the model's own
        parts.append(f"{CALL_OPEN}{json.dumps({'name': call.get('name', ''), 'arguments': arguments})}{CALL_CLOSE}")
    return "".join(parts)


def _ending(choice: _Choice) -> str:
    text = THINK_CLOSE if choice.thinking else ""
    choice.thinking = False
    text += _call_text(choice.calls)
    choice.calls = {}
    return text


async def chunks(events: AsyncIterator[dict[str, Any]], n: int, *, chat: bool, engine: str) -> AsyncIterator[Chunk]:
    """Chunks of an OpenAI stream (chat or text completion), ending as the engine's local streams end."""
    choices: dict[int, _Choice] = {}
    usage = Usage()
    for_first: str | None = None
    async for event in events:
        raw_usage = event.get("usage")
        if isinstance(raw_usage, dict):
            details = raw_usage.get("prompt_tokens_details")
            usage = Usage(
                int(raw_usage.get("prompt_tokens") or 0),
                int(raw_usage.get("completion_tokens") or 0),
                int((details or {}).get("cached_tokens") or 0) if isinstance(details, dict) else 0,
            )
        for item in event.get("choices") or []:
            if not isinstance(item, dict):
                continue
            raw_index = item.get("index")
            index = raw_index if isinstance(raw_index, int) else 0
            if not 0 <= index < n:
                continue  # an engine answering more choices than asked
            choice = choices.setdefault(index, _Choice())
            text = _delta_text(item, choice) if chat else str(item.get("text") or "")
            logprobs = item.get("logprobs")
            entries = logprobs.get("content") if isinstance(logprobs, dict) else None
            if text or entries:
                yield Chunk(text=text, logprobs=entries if isinstance(entries, list) else None, index=index)
            reason = item.get("finish_reason")
            if isinstance(reason, str) and choice.finish is None:
                choice.finish = "stop" if reason == "tool_calls" else reason
                tail = _ending(choice)
                if tail:
                    yield Chunk(text=tail, index=index)
                if n > 1:
                    yield Chunk(index=index, finish_reason=choice.finish)
                else:
                    for_first = choice.finish
    unfinished = [i for i in range(n) if i not in choices or choices[i].finish is None]
    if unfinished:
        # OpenAI streams end every choice with a finish reason; without one the answer was cut short (e.g.
        # llama_cpp.server ends a stream with [DONE] when another request interrupts it).
        raise RemoteEngineError(
            f"Engine {engine} ended the answer without a finish reason: it was cut short. If the engine serves "
            f"one request at a time (llama_cpp.server interrupts the running one), add it with --max-concurrency 1."
        )
    yield Chunk(finish_reason=(for_first or "stop") if n == 1 else None, usage=usage)


def _delta_text(item: dict[str, Any], choice: _Choice) -> str:
    delta = item.get("delta") or item.get("message") or {}
    if not isinstance(delta, dict):
        return ""
    text = ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        if not choice.thinking:
            text += THINK_OPEN
            choice.thinking = True
        text += reasoning
    content = delta.get("content")
    if isinstance(content, str) and content:
        if choice.thinking:
            text += THINK_CLOSE
            choice.thinking = False
        text += content
    for call in delta.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        position = call.get("index")
        slot = choice.calls.setdefault(position if isinstance(position, int) else 0, {})
        function = call.get("function") or {}
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                slot["name"] = slot.get("name", "") + function["name"]
            if isinstance(function.get("arguments"), str):
                slot["arguments"] = slot.get("arguments", "") + function["arguments"]
    return text
