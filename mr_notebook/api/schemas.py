"""JSON schemas of the OpenAI-compatible and Docker Model Runner bodies, for ``/openapi.json``.

They describe what the handlers accept and answer; the handlers still validate every field themselves
(with messages that name the parameter), so a schema here never replaces a check there.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_OBJ: Schema = {"type": "object"}
_STRING_OR_LIST: Schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
KEEP_ALIVE: Schema = {
    "description": "Idle time before the model unloads: '30s', '5m', '1h', seconds, 0 (at once) or -1 (never).",
    "anyOf": [{"type": "string", "maxLength": 32}, {"type": "number"}],
}

_SAMPLING: dict[str, Schema] = {
    "model": {"type": "string", "description": "A stored model name; optional under /engines/{model}/v1."},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": "number", "minimum": 0},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "repeat_penalty": {"type": "number", "minimum": 0},
    "seed": {"type": ["integer", "null"]},
    "stop": {"anyOf": [_STRING_OR_LIST, {"type": "null"}]},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "n": {"type": "integer", "minimum": 1, "maximum": 1},
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    "response_format": {
        "type": "object",
        "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}, "json_schema": _OBJ},
        "required": ["type"],
    },
    "keep_alive": KEEP_ALIVE,
    "user": {"type": "string"},
}

MESSAGE: Schema = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
                {"type": "null"},
            ]
        },
        "name": {"type": "string"},
    },
}

CHAT_REQUEST: Schema = {
    "type": "object",
    "required": ["messages"],
    "properties": {**_SAMPLING, "messages": {"type": "array", "minItems": 1, "items": MESSAGE}},
}

COMPLETION_REQUEST: Schema = {
    "type": "object",
    "required": ["prompt"],
    "properties": {**_SAMPLING, "prompt": _STRING_OR_LIST, "echo": {"type": "boolean"}},
}

EMBEDDINGS_REQUEST: Schema = {
    "type": "object",
    "required": ["input"],
    "properties": {
        "model": _SAMPLING["model"],
        "input": {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "minItems": 1, "items": {"type": "string"}},
                {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}},
                },
            ]
        },
        "encoding_format": {"enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
    },
}

_USAGE: Schema = {
    "type": "object",
    "required": ["prompt_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
    },
}

CHAT_RESPONSE: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {"index": {"type": "integer"}, "message": _OBJ},
            },
        },
        "usage": _USAGE,
    },
}

COMPLETION_RESPONSE: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "object": {"const": "text_completion"},
        "choices": {
            "type": "array",
            "items": {"type": "object", "required": ["index", "text"], "properties": {"text": {"type": "string"}}},
        },
        "usage": _USAGE,
    },
}

EMBEDDINGS_RESPONSE: Schema = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "embedding": {"anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]}
                },
            },
        },
        "usage": _USAGE,
    },
}

MODEL_OBJECT: Schema = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"}},
}
MODEL_LIST: Schema = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL_OBJECT}},
}

#: Docker Model Runner's model record (``list --json`` / ``inspect``).
STORED_MODEL: Schema = {
    "type": "object",
    "required": ["id", "tags", "created", "config"],
    "properties": {"id": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
}

#: One Server-Sent Event: ``data`` is a JSON chunk (an error body on failure), the last one is ``[DONE]``.
SSE: Schema = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}},
    "description": "Server-Sent Events: `data: {chunk}` lines, then `data: [DONE]`.",
}
NDJSON: Schema = {"type": "string", "description": "One JSON object per line (progress, then success or error)."}

TAG_REQUEST: Schema = {
    "type": "object",
    "required": ["target"],
    "properties": {"target": {"type": "string", "description": "The new name, e.g. ai/mine:v1."}},
}
CREATE_REQUEST: Schema = {
    "type": "object",
    "required": ["from"],
    "properties": {"from": {"type": "string", "description": "What to pull, e.g. ai/smollm2."}},
}
UNLOAD_REQUEST: Schema = {
    "type": "object",
    "properties": {"models": {"type": "array", "items": {"type": "string"}}, "all": {"type": "boolean"}},
}
CONFIGURE_REQUEST: Schema = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {"type": "string"},
        "context_size": {"type": "integer", "minimum": 1},
        "keep_alive": KEEP_ALIVE,
    },
}

LOAD_REQUEST: Schema = {
    "type": "object",
    "required": ["model"],
    "properties": {"model": {"type": "string"}, "keep_alive": KEEP_ALIVE, "stream": {"type": "boolean"}},
}
PACKAGE_REQUEST: Schema = {
    "type": "object",
    "required": ["name", "path"],
    "properties": {"name": {"type": "string"}, "path": {"type": "string"}},
}
PRUNE_RESULT: Schema = {"type": "object", "required": ["files", "bytes"]}

LOADED_MODEL: Schema = {
    "type": "object",
    "required": ["model", "id", "pid", "keep_alive"],
    "properties": {
        "model": {"type": "string"},
        "pid": {"type": "integer"},
        "keep_alive": {"type": "number"},
        "expires_at": {"type": ["string", "null"]},
    },
}
STATUS: Schema = {
    "type": "object",
    "required": ["status", "backend", "mode"],
    "properties": {"status": {"type": "string"}},
}
OPENAPI_DOCUMENT: Schema = {"type": "object", "required": ["openapi", "paths"]}
