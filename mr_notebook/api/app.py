"""The route table, the same under every root (``{base_url}mr/`` in Jupyter, ``/`` standalone).

``ROUTES`` is the one description of the API: both hosts build their Tornado rules from it and
``GET /openapi.json`` publishes it (see ``openapi.py``). A new family of routes (Ollama's, Anthropic's)
exports its own list of :class:`RouteSpec` and is added to ``ROUTES`` here, before the catch-all.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from mr_notebook import __version__
from mr_notebook.api import schemas as s
from mr_notebook.api.base import (
    ALLOWED_HOSTS_SETTING,
    ALLOWED_ORIGINS_SETTING,
    API_KEY_SETTING,
    ApiHandler,
    NotFoundHandler,
    StandaloneAuth,
)
from mr_notebook.api.completions import CompletionsHandler
from mr_notebook.api.context import SETTINGS_KEY, ApiContext
from mr_notebook.api.generation import ChatCompletionsHandler
from mr_notebook.api.model_routes import (
    CreateHandler,
    LoadModelHandler,
    ModelHandler,
    ModelsHandler,
    PruneHandler,
    PurgeHandler,
    TagHandler,
)
from mr_notebook.api.openai_routes import (
    EmbeddingsHandler,
    OpenAIModelHandler,
    OpenAIModelsHandler,
)
from mr_notebook.api.openapi import Operation, RouteSpec, document, tornado_rules
from mr_notebook.api.protocol_routes import PROTOCOL_ROUTES, ROOT_ROUTE
from mr_notebook.api.runner_routes import (
    ConfigureHandler,
    DfHandler,
    HealthHandler,
    LoadHandler,
    MetricsHandler,
    PsHandler,
    StatusHandler,
    UnloadHandler,
)

Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]


def openai_paths(suffix: str) -> tuple[str, ...]:
    """The OpenAI roots: /v1, /engines/v1, /engines/llama.cpp/v1 and /engines/{model}/v1.

    Order matters: the fixed forms come first so "engines/llama.cpp/v1" is never read as a model called llama.cpp.
    """
    return tuple(f"{root}/{suffix}" for root in ("/v1", "/engines/v1", "/engines/llama.cpp/v1", "/engines/{model}/v1"))


class OpenAPIHandler(ApiHandler):
    """``GET /openapi.json``: the OpenAPI 3.1 description of every route, for this host's root."""

    route_name = "openapi"

    @tornado.web.authenticated
    def get(self) -> None:
        root = self.request.path.removesuffix("openapi.json").rstrip("/")
        server = f"{self.request.protocol}://{self.request.host}{root}"
        self.write_json(document(ROUTES, server, __version__))


def _get(summary: str, response: s.Schema, **extra: Any) -> dict[str, Operation]:
    return {"get": Operation(summary, responses={"application/json": response}, **extra)}


_OPENAI = ("OpenAI",)
_RUNNER = ("Docker Model Runner",)

ROUTES: list[RouteSpec] = [
    RouteSpec(
        openai_paths("chat/completions"),
        ChatCompletionsHandler,
        {
            "post": Operation(
                "Chat completion (streams Server-Sent Events with stream: true)",
                s.CHAT_REQUEST,
                {"application/json": s.CHAT_RESPONSE, "text/event-stream": s.SSE},
            )
        },
        tags=_OPENAI,
    ),
    RouteSpec(
        openai_paths("completions"),
        CompletionsHandler,
        {
            "post": Operation(
                "Text completion",
                s.COMPLETION_REQUEST,
                {"application/json": s.COMPLETION_RESPONSE, "text/event-stream": s.SSE},
            )
        },
        tags=_OPENAI,
    ),
    RouteSpec(
        openai_paths("embeddings"),
        EmbeddingsHandler,
        {"post": Operation("Embeddings", s.EMBEDDINGS_REQUEST, {"application/json": s.EMBEDDINGS_RESPONSE})},
        tags=_OPENAI,
    ),
    RouteSpec(openai_paths("models"), OpenAIModelsHandler, _get("Stored models", s.MODEL_LIST), tags=_OPENAI),
    RouteSpec(openai_paths("models/{ref}"), OpenAIModelHandler, _get("One model", s.MODEL_OBJECT), tags=_OPENAI),
    RouteSpec(
        ("/models",),
        ModelsHandler,
        _get("Stored models (docker model list --json)", {"type": "array", "items": s.STORED_MODEL}),
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/create",),
        CreateHandler,
        {
            "post": Operation(
                "Pull a model (streams NDJSON progress)",
                s.CREATE_REQUEST,
                {"application/x-ndjson": s.NDJSON},
                destructive=True,
                network=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/purge",),
        PurgeHandler,
        {
            "delete": Operation(
                "Unload every model, then delete every stored model (busy models: 409 without force)",
                query={"force": {"type": "boolean"}},
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/prune",),
        PruneHandler,
        {
            "post": Operation(
                "Delete partial downloads and files no model uses",
                responses={"application/json": s.PRUNE_RESULT},
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/load",),
        LoadModelHandler,
        {
            "post": Operation(
                "Add a GGUF model: the file as an application/octet-stream body (?name=…&digest=sha256:…), or "
                '{"name", "path"} of a file the server can read (hard-linked when on the same filesystem)',
                s.PACKAGE_REQUEST,
                {"application/json": {"type": "object", "required": ["model"]}},
                status=201,
                query={"name": {"type": "string"}, "digest": {"type": "string"}},
                destructive=True,
                other_bodies={"application/octet-stream": {"type": "string", "format": "binary"}},
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/{ref}/tag",),
        TagHandler,
        {
            "post": Operation(
                "Give a model another name",
                s.TAG_REQUEST,
                {"application/json": {"type": "object"}},
                status=201,
                query={"repo": {"type": "string"}, "tag": {"type": "string"}},
                body_optional=True,
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/models/{ref}",),
        ModelHandler,
        {
            "get": Operation("Inspect a model", responses={"application/json": s.STORED_MODEL}),
            "delete": Operation(
                "Remove a name (and the model when no name is left)",
                query={"force": {"type": "boolean"}},
                destructive=True,
            ),
        },
        tags=_RUNNER,
    ),
    RouteSpec(("/engines/status",), StatusHandler, _get("What is serving, and how", s.STATUS), tags=_RUNNER),
    RouteSpec(
        ("/engines/ps",), PsHandler, _get("Loaded models", {"type": "array", "items": s.LOADED_MODEL}), tags=_RUNNER
    ),
    RouteSpec(("/engines/df",), DfHandler, _get("Disk usage of the store", {"type": "object"}), tags=_RUNNER),
    RouteSpec(
        ("/engines/load",),
        LoadHandler,
        {
            "post": Operation(
                "Load a model now; answers once loaded (stream: true sends NDJSON progress first)",
                s.LOAD_REQUEST,
                {"application/json": s.LOADED_MODEL, "application/x-ndjson": s.NDJSON},
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/engines/unload",),
        UnloadHandler,
        {
            "post": Operation(
                "Unload models",
                s.UNLOAD_REQUEST,
                {"application/json": {"type": "object", "required": ["unloaded_runners"]}},
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(
        ("/engines/_configure",),
        ConfigureHandler,
        {
            "post": Operation(
                "Store a model's settings; its idle workers reload now, busy ones once idle",
                s.CONFIGURE_REQUEST,
                {"application/json": {"type": "object"}},
                status=202,
                destructive=True,
            )
        },
        tags=_RUNNER,
    ),
    RouteSpec(("/health",), HealthHandler, _get("Liveness", {"type": "object"})),
    RouteSpec(("/metrics",), MetricsHandler, {"get": Operation("Prometheus metrics", responses={"text/plain": {}})}),
    RouteSpec(("/openapi.json",), OpenAPIHandler, _get("This document", s.OPENAPI_DOCUMENT)),
    # Ollama, Anthropic and llama-server routes (H-protocols); GET / answers as Ollama does (clients probe it).
    *PROTOCOL_ROUTES,
    ROOT_ROUTE,
]


def _compose(
    handler: type[tornado.web.RequestHandler],
    base: type[tornado.web.RequestHandler],
    cache: dict[type[tornado.web.RequestHandler], type[tornado.web.RequestHandler]],
) -> type[tornado.web.RequestHandler]:
    """``handler`` over the host's base class, which brings the host's authentication."""
    if handler not in cache:
        cache[handler] = type(handler.__name__, (handler, base), {"__module__": handler.__module__})
    return cache[handler]


def make_app_handlers(prefix: str = "/", base: type[tornado.web.RequestHandler] | None = None) -> list[Route]:
    """Every route under ``prefix``; ``base`` is the host's handler base (default: standalone auth).

    Jupyter passes ``jupyter_server.base.handlers.APIHandler`` and the prefix ``"mr/"`` (it adds base_url).
    Anything under the root that no route matches gets a JSON 404 from the catch-all.
    """
    host = base if base is not None else StandaloneAuth
    cache: dict[type[tornado.web.RequestHandler], type[tornado.web.RequestHandler]] = {}
    rules: list[tuple[str, type[tornado.web.RequestHandler]]] = [*tornado_rules(ROUTES), (".*", NotFoundHandler)]
    return [(prefix + pattern, _compose(handler, host, cache), {}) for pattern, handler in rules]


def make_application(
    context: ApiContext,
    *,
    api_key: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
    allowed_origins: tuple[str, ...] = (),
) -> tornado.web.Application:
    """The standalone Tornado application (``mr-notebook serve``, ``%model serve``)."""
    settings: dict[str, Any] = {
        SETTINGS_KEY: context,
        API_KEY_SETTING: api_key,
        ALLOWED_HOSTS_SETTING: allowed_hosts,
        ALLOWED_ORIGINS_SETTING: allowed_origins,
    }
    return tornado.web.Application(make_app_handlers("/"), **settings)
