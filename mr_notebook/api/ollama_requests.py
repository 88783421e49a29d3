"""Ollama requests in the engine's terms: ``options``, ``format``, ``think``, ``keep_alive`` and chat messages
as an OpenAI chat body (every protocol runs through :func:`mr_notebook.api.turns.run_turn`)."""

from __future__ import annotations

from typing import Any

from mr_notebook.errors import InvalidRequest
from mr_notebook.settings import parse_duration

#: Ollama option → OpenAI body field (num_predict and num_ctx are handled apart).
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


#: The smallest ``num_ctx`` accepted: below it llama.cpp's batch and the chat template itself do not fit.
MIN_NUM_CTX = 64
#: The largest: more than any model's trained context (llama.cpp keeps the context size in 32 bits).
MAX_NUM_CTX = 1 << 24


def num_ctx(body: dict[str, Any]) -> int | None:
    """``options.num_ctx``: the context the model must run with (a different one reloads it, as in Ollama)."""
    options = body.get("options")
    value = options.get("num_ctx") if isinstance(options, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_NUM_CTX <= value <= MAX_NUM_CTX:
        raise InvalidRequest(
            f"options.num_ctx must be an integer from {MIN_NUM_CTX} to {MAX_NUM_CTX} (the context size in "
            "tokens, e.g. 4096).",
            "options",
        )
    return value


def openai_body(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """An Ollama request's ``options``, ``format``, ``keep_alive``, ``tools`` and ``think`` as an OpenAI body."""
    out: dict[str, Any] = {"messages": messages}
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidRequest('options must be an object like {"temperature": 0.2, "num_predict": 64}.', "options")
    for key, field in _OPTIONS.items():
        if options.get(key) is not None:
            out[field] = options[key]
    num_predict = options.get("num_predict")
    if num_predict is not None:
        if isinstance(num_predict, bool) or not isinstance(num_predict, int):
            raise InvalidRequest("options.num_predict must be an integer (-1: no limit).", "options")
        if num_predict > 0:
            out["max_tokens"] = num_predict  # -1 (no limit) and -2 (fill the context) mean the context caps it
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    elif fmt not in (None, ""):
        raise InvalidRequest('format must be "json" or a JSON schema object.', "format")
    if body.get("keep_alive") is not None:
        out["keep_alive"] = body["keep_alive"]
    if body.get("tools"):
        out["tools"] = body["tools"]
    think = body.get("think")
    if think is not None and not isinstance(think, bool | str):
        raise InvalidRequest('think must be true, false, or "low" / "medium" / "high".', "think")
    if think is False:
        out["chat_template_kwargs"] = {"enable_thinking": False}
    elif think is True:
        out["chat_template_kwargs"] = {"enable_thinking": True}
    elif think is not None:  # a level: gpt-oss templates read it as reasoning_effort
        out["chat_template_kwargs"] = {"enable_thinking": True, "reasoning_effort": think}
    return out


def chat_messages(messages: Any) -> list[dict[str, Any]]:
    """Ollama chat messages in OpenAI's shape (tool calls with ids, tool results with their name)."""
    if not isinstance(messages, list):
        raise InvalidRequest('messages must be a list of {"role": …, "content": …} objects.', "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string role.", "messages")
        if message.get("images"):
            raise InvalidRequest(f"messages[{i}] has images; the models served here read text only.", "messages")
        content = message.get("content")
        entry: dict[str, Any] = {"role": message["role"], "content": content if content is not None else ""}
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list) or not all(
                isinstance(call, dict) and isinstance(call.get("function"), dict) for call in calls
            ):
                raise InvalidRequest(
                    f'messages[{i}].tool_calls must be a list of {{"function": {{"name": …, "arguments": {{…}}}}}}.',
                    "messages",
                )
            if calls:
                entry["tool_calls"] = [
                    {"id": f"call_{i}_{n}", "type": "function", "function": dict(call["function"])}
                    for n, call in enumerate(calls)
                ]
        if message.get("tool_name"):
            entry["name"] = message["tool_name"]
        out.append(entry)
    return out


def keep_alive_seconds(body: dict[str, Any]) -> float | None:
    value = body.get("keep_alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidRequest("keep_alive must be a duration like '5m', a number of seconds, 0 or -1.", "keep_alive")
    return parse_duration(value)
