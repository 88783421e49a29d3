"""Generation parameters, validated from an OpenAI request body.

OpenAI ignores unknown fields and so do we; a known field with a wrong type or value is an
:class:`~mr_notebook.errors.InvalidRequest` naming it (the HTTP API answers 400 with ``param`` set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mr_notebook.errors import InvalidRequest
from mr_notebook.settings import parse_duration

_MAX_TOP_LOGPROBS = 20


def _number(
    body: Mapping[str, Any], key: str, default: float, *, low: float | None = None, high: float | None = None
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{key} must be a number, not {value!r}.", key)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise InvalidRequest(f"{key} must be {span}; got {value!r}.", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, *, low: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{key} must be an integer, not {value!r}.", key)
    if low is not None and value < low:
        raise InvalidRequest(f"{key} must be at least {low}; got {value}.", key)
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return [s for s in value if s]
    raise InvalidRequest("stop must be a string or a list of strings.", "stop")


def _response_format(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        schema = value.get("schema")
        if schema is not None and not isinstance(schema, dict):
            raise InvalidRequest("response_format.schema must be a JSON schema object.", "response_format")
        return dict(value)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}.',
                "response_format",
            )
        return dict(value)
    raise InvalidRequest(
        'response_format must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {...}}.',
        "response_format",
    )


@dataclass
class GenerationParams:
    """Sampling and output options for one chat or text completion."""

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    keep_alive: float | None = None

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> GenerationParams:
        """Validate an OpenAI chat/completions body; raises ``InvalidRequest(message, param)``."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("The request body must be a JSON object.", None)
        n = _integer(body, "n", low=1)
        if n is not None and n > 1:
            raise InvalidRequest("n > 1 is not supported: send one request per answer you need.", "n")
        max_tokens = _integer(body, "max_completion_tokens", low=1)
        if max_tokens is None:
            max_tokens = _integer(body, "max_tokens", low=1)
        logprobs_raw = body.get("logprobs")
        top_logprobs = _integer(body, "top_logprobs", low=0)
        if logprobs_raw is None or isinstance(logprobs_raw, bool):
            logprobs = bool(logprobs_raw)
        elif isinstance(logprobs_raw, int) and logprobs_raw >= 0:
            # The legacy completions API gives the number of top logprobs here.
            logprobs, top_logprobs = True, logprobs_raw
        else:
            raise InvalidRequest("logprobs must be true or false.", "logprobs")
        if top_logprobs is not None and top_logprobs > _MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be at most {_MAX_TOP_LOGPROBS}.", "top_logprobs")
        if top_logprobs is not None and not logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true.", "top_logprobs")
        keep_alive_raw = body.get("keep_alive")
        keep_alive = None
        if keep_alive_raw is not None:
            if not isinstance(keep_alive_raw, str | int | float):
                raise InvalidRequest(
                    "keep_alive must be a duration like '5m', a number of seconds, or -1.", "keep_alive"
                )
            keep_alive = parse_duration(keep_alive_raw)
        top_k = _integer(body, "top_k", low=0)
        return cls(
            max_tokens=max_tokens,
            temperature=_number(body, "temperature", 0.8, low=0.0),
            top_p=_number(body, "top_p", 0.95, low=0.0, high=1.0),
            top_k=40 if top_k is None else top_k,
            min_p=_number(body, "min_p", 0.05, low=0.0, high=1.0),
            repeat_penalty=_number(body, "repeat_penalty", 1.0, low=0.0),
            presence_penalty=_number(body, "presence_penalty", 0.0, low=-2.0, high=2.0),
            frequency_penalty=_number(body, "frequency_penalty", 0.0, low=-2.0, high=2.0),
            seed=_integer(body, "seed"),
            stop=_stop(body.get("stop")),
            response_format=_response_format(body.get("response_format")),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            keep_alive=keep_alive,
        )

    def to_wire(self) -> dict[str, Any]:
        """The part the worker needs (keep_alive is the host's business)."""
        data = asdict(self)
        data.pop("keep_alive")
        return data


def normalize_messages(messages: Any) -> list[dict[str, Any]]:
    """Check an OpenAI message list; text given as a list of parts becomes one string."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects.", "messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string role.", "messages")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise InvalidRequest(
                        f"messages[{i}].content: only text parts ({{'type': 'text', 'text': ...}}) are "
                        "supported by this model.",
                        "messages",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        elif content is None:
            content = ""
        elif not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts.", "messages")
        entry = {k: v for k, v in message.items() if k != "content"}
        entry["content"] = content
        out.append(entry)
    return out
