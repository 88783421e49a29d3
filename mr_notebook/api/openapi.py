"""One description of the routes: both hosts' route tables and ``GET /openapi.json`` come from it.

A :class:`RouteSpec` names the OpenAPI path templates of one handler (``/v1/chat/completions``,
``/engines/{model}/v1/chat/completions``), the verbs it answers with their request and response schemas, and
the error shape of the family it belongs to (OpenAI, Ollama, Anthropic). ``app.py`` lists the specs in
matching order; :func:`tornado_rules` turns them into Tornado rules and :func:`document` into OpenAPI 3.1.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tornado.web

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"

#: OpenAI's error body, which every route answers unless its family has its own.
OPENAI_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "additionalProperties": False,
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


@dataclass(frozen=True)
class PathParam:
    """A ``{name}`` in a path template: the regex it matches and the handler keyword that receives it."""

    name: str
    kwarg: str
    pattern: str = "[^/]+"
    description: str = ""


#: Path parameters every route may use; a route can add its own through ``RouteSpec.params``.
PATH_PARAMS: dict[str, PathParam] = {
    # Lazy: "engines/{model}/v1/models/{ref}" must leave the rest of the path to the later parameter.
    "model": PathParam("model", "path_model", ".+?", "A stored model name such as ai/smollm2 (may hold '/')."),
    "ref": PathParam("ref", "ref", ".+", "A model name or ID (may hold '/')."),
}


@dataclass(frozen=True)
class Operation:
    """One verb of a route."""

    summary: str
    #: JSON schema of the request body (None: no body).
    request: Schema | None = None
    #: Schema of the success body, by media type (``application/json``, ``text/event-stream`` …).
    responses: Mapping[str, Schema] = field(default_factory=lambda: {"application/json": {}})
    status: int = 200
    #: Query parameters: name → JSON schema.
    query: Mapping[str, Schema] = field(default_factory=dict)
    #: Whether a body may be omitted (e.g. tagging with ``?repo=…&tag=…``).
    body_optional: bool = False
    #: Changes or deletes stored state (fuzzers keep such operations apart).
    destructive: bool = False
    #: Reaches the network (pulls): fuzzers must not call it.
    network: bool = False
    #: Request bodies besides JSON, by media type (a file upload: ``application/octet-stream``).
    other_bodies: Mapping[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteSpec:
    """One handler under one or more path templates (matched in the order given)."""

    paths: tuple[str, ...]
    handler: type[tornado.web.RequestHandler]
    operations: Mapping[str, Operation]
    #: Schema of every error body on these paths (OpenAI's unless the family has its own).
    error: Schema = field(default_factory=lambda: OPENAI_ERROR)
    tags: tuple[str, ...] = ()
    params: Mapping[str, PathParam] = field(default_factory=dict)

    def param(self, name: str) -> PathParam:
        return self.params.get(name) or PATH_PARAMS.get(name) or PathParam(name, name)


_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def tornado_pattern(spec: RouteSpec, path: str) -> str:
    """``/models/{ref}/tag`` → ``models/(?P<ref>.+)/tag`` (relative to the host's API root)."""
    out, last = [], 0
    relative = path.removeprefix("/")
    for match in _TEMPLATE.finditer(relative):
        param = spec.param(match.group(1))
        out.append(re.escape(relative[last : match.start()]))
        out.append(f"(?P<{param.kwarg}>{param.pattern})")
        last = match.end()
    out.append(re.escape(relative[last:]))
    return "".join(out)


def tornado_rules(specs: Iterable[RouteSpec]) -> list[tuple[str, type[tornado.web.RequestHandler]]]:
    """(pattern relative to the API root, handler) for every path of every spec, in order."""
    return [(tornado_pattern(spec, path), spec.handler) for spec in specs for path in spec.paths]


def _operation(spec: RouteSpec, path: str, verb: str, op: Operation) -> Schema:
    params: list[Schema] = []
    for name in _TEMPLATE.findall(path):
        param = spec.param(name)
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": param.description,
                "schema": {"type": "string", "minLength": 1},
            }
        )
    for name, schema in op.query.items():
        params.append({"name": name, "in": "query", "required": False, "schema": schema})
    success = {media: {"schema": schema} for media, schema in op.responses.items()}
    doc: Schema = {
        "summary": op.summary,
        "operationId": f"{verb}_{spec.handler.__name__}_{_slug(path)}",
        "responses": {
            str(op.status): {"description": "Success", "content": success},
            "default": {"description": "Error", "content": {"application/json": {"schema": spec.error}}},
        },
    }
    if spec.tags:
        doc["tags"] = list(spec.tags)
    if params:
        doc["parameters"] = params
    if op.request is not None:
        doc["requestBody"] = {
            "required": not op.body_optional,
            "content": {
                "application/json": {"schema": op.request},
                **{media: {"schema": schema} for media, schema in op.other_bodies.items()},
            },
        }
    extensions = {"x-destructive": op.destructive, "x-network": op.network}
    doc.update({k: v for k, v in extensions.items() if v})
    return doc


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"


def document(specs: Iterable[RouteSpec], server_url: str, version: str) -> Schema:
    """The OpenAPI 3.1 document of ``specs`` served at ``server_url`` (no trailing slash)."""
    paths: dict[str, Schema] = {}
    for spec in specs:
        for path in spec.paths:
            entry = paths.setdefault(path, {})
            for verb, op in spec.operations.items():
                entry[verb] = _operation(spec, path, verb, op)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mr-notebook",
            "version": version,
            "description": "OpenAI-compatible and Docker Model Runner API for local GGUF models.",
        },
        "servers": [{"url": server_url}],
        "paths": paths,
    }
