"""Jupyter server extension: the model-runner and OpenAI API under ``{base_url}mr/``.

Enabled on install (``jupyter-config/``). Configure it as ``c.MrNotebook.<trait>`` in
``jupyter_server_config.py`` (or ``--MrNotebook.<trait>=…``). The server process owns the Runner, so every
kernel it starts (which finds it through ``MR_NOTEBOOK_URL`` / ``MR_NOTEBOOK_TOKEN``) and every external
client shares the loaded models. Requests authenticate like any Jupyter API call; ``Authorization: Bearer
<token>`` works, so ``OpenAI(base_url=".../mr/v1", api_key=<token>)`` does too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import url_path_join
from traitlets import Dict, Integer, List, Unicode

from mr_notebook.api.app import make_app_handlers
from mr_notebook.api.context import DEFAULT_MAX_BODY, SETTINGS_KEY, ApiContext, ApiLimits
from mr_notebook.settings import EngineSettings, parse_duration, parse_size

log = logging.getLogger("mr_notebook.serverext")
#: Where the API lives, below the server's base_url.
API_PATH = "mr/"


class MrNotebook(ExtensionApp):
    """mr_notebook's server extension (traits: ``c.MrNotebook.*``)."""

    name = "mr_notebook"
    description = "Docker Model Runner inside Jupyter: an OpenAI-compatible API for local GGUF models"
    load_other_extensions = True

    home = Unicode(
        "", help="Model store folder (default: MR_NOTEBOOK_HOME, else the per-user data folder).", config=True
    )
    memory_budget = Unicode(
        "",
        help="Memory the loaded models may use, e.g. '8GiB' (default: "
        "MR_NOTEBOOK_MEMORY_BUDGET, else a fraction of available memory).",
        config=True,
    )
    max_models = Integer(
        None, allow_none=True, help="Models loaded at once (default: MR_NOTEBOOK_MAX_MODELS or 4).", config=True
    )
    keep_alive = Unicode(
        "",
        help="Idle time before a model unloads: '5m', '30s', '0' (at once), '-1' "
        "(never). Default: MR_NOTEBOOK_KEEP_ALIVE or 5m.",
        config=True,
    )
    max_queue = Integer(
        None,
        allow_none=True,
        help="Requests waiting per model before 503 (default: MR_NOTEBOOK_MAX_QUEUE or 64).",
        config=True,
    )
    max_body_size = Integer(DEFAULT_MAX_BODY, help="Largest request body in bytes (larger ones get 413).", config=True)
    max_tokens = Integer(
        None,
        allow_none=True,
        help="Cap on max_tokens per request (default: only the model's context caps it).",
        config=True,
    )

    threads = Integer(
        None,
        allow_none=True,
        help="CPU threads per model worker (default: MR_NOTEBOOK_THREADS, else the physical cores).",
        config=True,
    )
    parallel = Integer(
        None,
        allow_none=True,
        help="Requests each model decodes at once (default: MR_NOTEBOOK_PARALLEL or 4).",
        config=True,
    )

    engines = List(
        Dict(),
        help="Remote engines besides those of `mr-notebook engine add`, e.g. [{'name': 'gpu', 'url': "
        "'http://gpu-box:8000/v1', 'api_key_env': 'VLLM_API_KEY'}]; their models are NAME/<model id>. Key "
        "variables are taken out of the environment kernels inherit.",
        config=True,
    )

    _context: ApiContext | None = None

    def engine_settings(self) -> EngineSettings:
        """Environment defaults, overridden by whatever traits were configured."""
        base = EngineSettings.from_env()
        changes: dict[str, Any] = {}
        if self.memory_budget:
            changes["memory_budget"] = parse_size(self.memory_budget, param="MrNotebook.memory_budget")
        if self.max_models is not None:
            changes["max_models"] = self.max_models
        if self.keep_alive:
            changes["keep_alive"] = parse_duration(self.keep_alive, param="MrNotebook.keep_alive")
        if self.max_queue is not None:
            changes["max_queue"] = self.max_queue
        if self.threads is not None:
            changes["threads"] = self.threads
        if self.parallel is not None:
            changes["parallel"] = self.parallel
        return dataclasses.replace(base, **changes)

    def initialize_settings(self) -> None:
        from mr_notebook.engine import Runner
        from mr_notebook.store import Store

        store = Store(self.home or None)
        limits = ApiLimits(max_body_size=self.max_body_size, max_tokens=self.max_tokens)
        runner = Runner(store, self.engine_settings(), self.engines)
        moved = runner.remote.hide_keys()  # kernels inherit os.environ: remote keys stay in the server
        if moved:
            log.info("remote engine keys kept from kernels: %s", ", ".join(moved))
        self._context = ApiContext(store, runner, limits, mode="jupyter")
        self.settings[SETTINGS_KEY] = self._context
        self.publish_environment()
        try:  # the port is final once the loop runs (port retries); kernels start after that
            from tornado.ioloop import IOLoop

            IOLoop.current().add_callback(self.publish_environment)
        except RuntimeError:
            log.debug("No IOLoop yet: MR_NOTEBOOK_URL keeps the configured port")

    def publish_environment(self) -> None:
        """Put the endpoint and token in this process's environment, which kernels inherit."""
        if self.serverapp is None:
            return
        os.environ["MR_NOTEBOOK_URL"] = url_path_join(self.serverapp.connection_url, API_PATH)
        token = self.serverapp.identity_provider.token
        if token:
            os.environ["MR_NOTEBOOK_TOKEN"] = token
        else:
            os.environ.pop("MR_NOTEBOOK_TOKEN", None)

    def initialize_handlers(self) -> None:
        self.handlers.extend(make_app_handlers(API_PATH, base=APIHandler))

    async def stop_extension(self) -> None:
        """Server shutdown: every model worker process ends."""
        if self._context is not None:
            await self._context.close()
            self._context = None


#: The name ``mr_notebook._jupyter_server_extension_points`` uses.
MrNotebookApp = MrNotebook
