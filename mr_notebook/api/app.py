"""The route table, the same under every root (``{base_url}mr/`` in Jupyter, ``/`` standalone)."""

from __future__ import annotations

from typing import Any

import tornado.web

from mr_notebook.api.base import (
    ALLOWED_HOSTS_SETTING,
    API_KEY_SETTING,
    ApiHandler,
    NotFoundHandler,
    StandaloneAuth,
)
from mr_notebook.api.context import SETTINGS_KEY, ApiContext
from mr_notebook.api.generation import ChatCompletionsHandler, CompletionsHandler
from mr_notebook.api.openai_routes import (
    EmbeddingsHandler,
    OpenAIModelHandler,
    OpenAIModelsHandler,
)
from mr_notebook.api.runner_routes import (
    ConfigureHandler,
    CreateHandler,
    DfHandler,
    HealthHandler,
    MetricsHandler,
    ModelHandler,
    ModelsHandler,
    PsHandler,
    PurgeHandler,
    StatusHandler,
    TagHandler,
    UnloadHandler,
)

Route = tuple[str, type[tornado.web.RequestHandler], dict[str, Any]]

# The OpenAI roots: /v1, /engines/v1, /engines/llama.cpp/v1 and /engines/{model}/v1. Alternation order
# matters: the fixed forms come first so "engines/llama.cpp/v1" is never read as a model called llama.cpp.
OPENAI_ROOT = r"(?:v1|engines/v1|engines/llama\.cpp/v1|engines/(?P<path_model>.+?)/v1)/"

ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (OPENAI_ROOT + "chat/completions", ChatCompletionsHandler),
    (OPENAI_ROOT + "completions", CompletionsHandler),
    (OPENAI_ROOT + "embeddings", EmbeddingsHandler),
    (OPENAI_ROOT + "models", OpenAIModelsHandler),
    (OPENAI_ROOT + r"models/(?P<ref>.+)", OpenAIModelHandler),
    ("models", ModelsHandler),
    ("models/create", CreateHandler),
    ("models/purge", PurgeHandler),
    (r"models/(?P<ref>.+)/tag", TagHandler),
    (r"models/(?P<ref>.+)", ModelHandler),
    ("engines/status", StatusHandler),
    ("engines/ps", PsHandler),
    ("engines/df", DfHandler),
    ("engines/unload", UnloadHandler),
    ("engines/_configure", ConfigureHandler),
    ("health", HealthHandler),
    ("metrics", MetricsHandler),
    ("", StatusHandler),
    (".*", NotFoundHandler),
]


def _compose(
    handler: type[ApiHandler],
    base: type[tornado.web.RequestHandler],
    cache: dict[type[ApiHandler], type[tornado.web.RequestHandler]],
) -> type[tornado.web.RequestHandler]:
    """``handler`` over the host's base class, which brings the host's authentication."""
    if handler not in cache:
        cache[handler] = type(handler.__name__, (handler, base), {"__module__": handler.__module__})
    return cache[handler]


def make_app_handlers(prefix: str = "/", base: type[tornado.web.RequestHandler] | None = None) -> list[Route]:
    """Every route under ``prefix``; ``base`` is the host's handler base (default: standalone auth).

    Jupyter passes ``jupyter_server.base.handlers.APIHandler`` and the prefix ``"mr/"`` (it adds base_url).
    """
    host = base if base is not None else StandaloneAuth
    cache: dict[type[ApiHandler], type[tornado.web.RequestHandler]] = {}
    return [(prefix + pattern, _compose(handler, host, cache), {}) for pattern, handler in ROUTES]


def make_application(
    context: ApiContext, *, api_key: str | None = None, allowed_hosts: tuple[str, ...] = ()
) -> tornado.web.Application:
    """The standalone Tornado application (``mr-notebook serve``, ``%model serve``)."""
    settings: dict[str, Any] = {SETTINGS_KEY: context, API_KEY_SETTING: api_key, ALLOWED_HOSTS_SETTING: allowed_hosts}
    return tornado.web.Application(make_app_handlers("/"), **settings)
