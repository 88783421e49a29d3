"""Route descriptions of the Ollama, Anthropic and llama-server routes (added to ``app.ROUTES``)."""

from __future__ import annotations

from typing import Any

from mr_notebook.api.anthropic_routes import CountTokensHandler, MessagesHandler
from mr_notebook.api.ollama_models import (
    CopyHandler,
    DeleteHandler,
    OllamaPsHandler,
    PullHandler,
    RootHandler,
    ShowHandler,
    TagsHandler,
    VersionHandler,
)
from mr_notebook.api.ollama_routes import ChatHandler, EmbedHandler, GenerateHandler, LegacyEmbeddingsHandler
from mr_notebook.api.openai_routes import DetokenizeHandler, TokenizeHandler
from mr_notebook.api.openapi import Operation, RouteSpec

Schema = dict[str, Any]

_OBJ: Schema = {"type": "object"}
_NDJSON = {"application/x-ndjson": {"type": "string"}}
_MODEL: Schema = {"type": "string", "description": "A stored model name (ai/smollm2:latest, or smollm2)."}
OLLAMA_ERROR: Schema = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
ANTHROPIC_ERROR: Schema = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


def _request(required: list[str], **properties: Schema) -> Schema:
    return {"type": "object", "required": required, "properties": properties}


_OLLAMA_COMMON: dict[str, Schema] = {
    "model": _MODEL,
    "stream": {"type": "boolean", "default": True},
    "format": {"anyOf": [{"const": "json"}, _OBJ]},
    "options": {"type": "object", "description": "temperature, top_p, top_k, seed, num_predict, stop …"},
    "keep_alive": {"anyOf": [{"type": "string", "maxLength": 32}, {"type": "number"}]},
    "think": {"anyOf": [{"type": "boolean"}, {"enum": ["low", "medium", "high"]}]},
}


def _ollama(paths: tuple[str, ...], handler: type, verb: str, summary: str, **op: Any) -> RouteSpec:
    return RouteSpec(paths, handler, {verb: Operation(summary, **op)}, error=OLLAMA_ERROR, tags=("Ollama",))


OLLAMA_ROUTES: list[RouteSpec] = [
    _ollama(("/api/version",), VersionHandler, "get", "Ollama API version"),
    _ollama(("/api/tags",), TagsHandler, "get", "Stored models, as Ollama lists them"),
    _ollama(("/api/show",), ShowHandler, "post", "Template, details, model_info, capabilities",
            request=_request(["model"], model=_MODEL)),
    _ollama(("/api/chat",), ChatHandler, "post", "Chat (streams NDJSON unless stream is false)",
            request=_request(["model"], messages={"type": "array"}, tools={"type": "array"}, **_OLLAMA_COMMON),
            responses={"application/json": _OBJ, **_NDJSON}),
    _ollama(("/api/generate",), GenerateHandler, "post", "Generate from a prompt (empty prompt: load or unload)",
            request=_request(["model"], prompt={"type": "string"}, suffix={"type": "string"},
                             system={"type": "string"}, raw={"type": "boolean"}, **_OLLAMA_COMMON),
            responses={"application/json": _OBJ, **_NDJSON}),
    _ollama(("/api/embed",), EmbedHandler, "post", "Embeddings of one text or a list",
            request=_request(["model", "input"], model=_MODEL,
                             input={"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})),
    _ollama(("/api/embeddings",), LegacyEmbeddingsHandler, "post", "Embedding of one text (legacy)",
            request=_request(["model", "prompt"], model=_MODEL, prompt={"type": "string"})),
    _ollama(("/api/ps",), OllamaPsHandler, "get", "Loaded models"),
    _ollama(("/api/pull",), PullHandler, "post", "Pull a model (streams NDJSON progress)",
            request=_request(["model"], model=_MODEL, stream={"type": "boolean"}),
            responses={"application/json": _OBJ, **_NDJSON}, destructive=True, network=True),
    _ollama(("/api/delete",), DeleteHandler, "delete", "Remove a model name",
            request=_request(["model"], model=_MODEL), destructive=True),
    _ollama(("/api/copy",), CopyHandler, "post", "Give a model another name",
            request=_request(["source", "destination"], source=_MODEL, destination=_MODEL), destructive=True),
]  # fmt: skip

#: ``GET /``: Ollama's greeting (clients probe it to find an Ollama server).
ROOT_ROUTE = RouteSpec(
    ("/",),
    RootHandler,
    {"get": Operation("Ollama is running", responses={"text/plain": {"type": "string"}})},
    error=OLLAMA_ERROR,
)

_MESSAGES_REQUEST = _request(
    ["model", "messages"],
    model=_MODEL,
    messages={"type": "array"},
    system={"anyOf": [{"type": "string"}, {"type": "array"}]},
    max_tokens={"type": "integer", "minimum": 1},
    tools={"type": "array"},
    tool_choice=_OBJ,
    stop_sequences={"type": "array", "items": {"type": "string"}},
    temperature={"type": "number", "minimum": 0},
    stream={"type": "boolean"},
    thinking=_OBJ,
)

ANTHROPIC_ROUTES: list[RouteSpec] = [
    RouteSpec(
        ("/v1/messages", "/anthropic/v1/messages"),
        MessagesHandler,
        {
            "post": Operation(
                "Anthropic Messages (streams Anthropic's events with stream: true)",
                {**_MESSAGES_REQUEST, "required": ["model", "messages", "max_tokens"]},
                {"application/json": _OBJ, "text/event-stream": {"type": "string"}},
            )
        },
        error=ANTHROPIC_ERROR,
        tags=("Anthropic",),
    ),
    RouteSpec(
        ("/v1/messages/count_tokens", "/anthropic/v1/messages/count_tokens"),
        CountTokensHandler,
        {"post": Operation("Prompt length in tokens", _MESSAGES_REQUEST, {"application/json": _OBJ})},
        error=ANTHROPIC_ERROR,
        tags=("Anthropic",),
    ),
]

LLAMA_SERVER_ROUTES: list[RouteSpec] = [
    RouteSpec(
        ("/tokenize",),
        TokenizeHandler,
        {
            "post": Operation(
                "Tokenize (llama-server's shape)",
                _request(["content"], content={"type": "string"}, model=_MODEL, with_pieces={"type": "boolean"}),
            )
        },
        tags=("llama-server",),
    ),
    RouteSpec(
        ("/detokenize",),
        DetokenizeHandler,
        {
            "post": Operation(
                "Detokenize (llama-server's shape)",
                _request(["tokens"], tokens={"type": "array", "items": {"type": "integer"}}, model=_MODEL),
            )
        },
        tags=("llama-server",),
    ),
]

PROTOCOL_ROUTES: list[RouteSpec] = [*OLLAMA_ROUTES, *ANTHROPIC_ROUTES, *LLAMA_SERVER_ROUTES]
