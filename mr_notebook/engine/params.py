"""Generation parameters, validated from an OpenAI request body.

OpenAI ignores unknown fields and so do we; a known field with a wrong type or value is an
:class:`~mr_notebook.errors.InvalidRequest` naming it (the HTTP API answers 400 with ``param`` set).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mr_notebook.errors import InvalidRequest
from mr_notebook.settings import parse_duration

_MAX_TOP_LOGPROBS = 20
#: Choices per request; the worker also caps ``n`` at the model's parallel sequences.
MAX_CHOICES = 16
#: Length, item-count and pattern-repeat limits a JSON schema may set. The schema-to-grammar converter writes
#: a limit of N as N nested rules, and llama.cpp refuses such grammars somewhere between 1000 and 2000.
MAX_SCHEMA_REPEAT = 1000
_SCHEMA_LIMITS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
_PATTERN_REPEAT = re.compile(r"\{(\d+)(?:,(\d*))?\}")
_REASONING_FORMATS = (None, "none", "auto", "deepseek", "deepseek-legacy", "split", "drop", "raw")


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


def check_schema(schema: Any, path: str = "schema", depth: int = 0) -> None:
    """Refuse limits that would make the grammar explode, naming where they are."""
    if depth > 64:
        raise InvalidRequest("response_format: the JSON schema nests deeper than 64 levels.", "response_format")
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_schema(item, f"{path}[{i}]", depth + 1)
        return
    if not isinstance(schema, dict):
        return
    for key in _SCHEMA_LIMITS:
        value = schema.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_SCHEMA_REPEAT:
            raise InvalidRequest(
                f"response_format: {path}.{key} is {value}, but grammars take limits up to {MAX_SCHEMA_REPEAT} "
                f"(each unit becomes a grammar rule). Lower it or drop it and check the length afterwards.",
                "response_format",
            )
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        for match in _PATTERN_REPEAT.finditer(pattern):
            counts = [int(g) for g in match.groups() if g]
            if any(c > MAX_SCHEMA_REPEAT for c in counts):
                raise InvalidRequest(
                    f"response_format: {path}.pattern repeats {match.group(0)}, but grammars take repeats up to "
                    f"{MAX_SCHEMA_REPEAT}. Use a smaller count or + / *.",
                    "response_format",
                )
    for key, value in schema.items():
        if isinstance(value, dict | list):
            check_schema(value, f"{path}.{key}", depth + 1)


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
        check_schema(schema)
        return dict(value)
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest(
                'response_format json_schema needs {"json_schema": {"name": ..., "schema": {...}}}.',
                "response_format",
            )
        check_schema(spec.get("schema"))
        return dict(value)
    raise InvalidRequest(
        'response_format must be {"type": "text"}, {"type": "json_object"} or '
        '{"type": "json_schema", "json_schema": {...}}.',
        "response_format",
    )


def _logit_bias(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise InvalidRequest('logit_bias must map token ids to biases, like {"50256": -100}.', "logit_bias")
    out: dict[str, float] = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) < 10):
            raise InvalidRequest(f"logit_bias: {key!r} is not a token id.", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise InvalidRequest(f"logit_bias[{key}] must be a number from -100 to 100.", "logit_bias")
        out[str(int(key))] = float(bias)
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, Mapping) for t in value):
        raise InvalidRequest('tools must be a list of {"type": "function", "function": {...}} objects.', "tools")
    return [dict(t) for t in value] or None


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
    #: Choices to generate (OpenAI's ``n``); the prompt is evaluated once and shared.
    n: int = 1
    #: Token id (as a string, as in OpenAI's JSON) → bias added to its logit.
    logit_bias: dict[str, float] = field(default_factory=dict)
    #: Passed to the model's chat template, as llama.cpp's server does.
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    #: For the API layer (how reasoning text is returned); the engine only carries it.
    reasoning_format: str | None = None
    #: Set by the API layer, never read from a request body: the lazy tool-call grammar for ``tool_choice``
    #: auto ({"family", "parallel", "call": one call's JSON schema, "params"}; see engine/llama/tool_grammar.py).
    tool_grammar: dict[str, Any] | None = None

    @classmethod
    def from_request(cls, body: Mapping[str, Any]) -> GenerationParams:
        """Validate an OpenAI chat/completions body; raises ``InvalidRequest(message, param)``."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("The request body must be a JSON object.", None)
        n = _integer(body, "n", low=1) or 1
        if n > MAX_CHOICES:
            raise InvalidRequest(f"n must be at most {MAX_CHOICES}; send several requests for more.", "n")
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise InvalidRequest(
                'chat_template_kwargs must be an object, like {"enable_thinking": false}.', "chat_template_kwargs"
            )
        parallel_tool_calls = body.get("parallel_tool_calls")
        if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
            raise InvalidRequest("parallel_tool_calls must be true or false.", "parallel_tool_calls")
        reasoning_format = body.get("reasoning_format")
        if reasoning_format not in _REASONING_FORMATS:
            raise InvalidRequest(
                f"reasoning_format must be one of {', '.join(str(f) for f in _REASONING_FORMATS[1:])}.",
                "reasoning_format",
            )
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
            n=n,
            logit_bias=_logit_bias(body.get("logit_bias")),
            tools=_tools(body.get("tools")),
            tool_choice=body.get("tool_choice"),
            parallel_tool_calls=parallel_tool_calls,
            chat_template_kwargs=dict(kwargs or {}),
            reasoning_format=reasoning_format,
        )

    def to_wire(self) -> dict[str, Any]:
        """The part the worker needs (keep_alive is the host's business)."""
        data = asdict(self)
        for key in ("keep_alive", "parallel_tool_calls", "reasoning_format"):
            data.pop(key)
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
