"""OpenAI SDK clients (and the raw base URL + key) for the engine this kernel uses.

Under Jupyter that is the server's endpoint (``…/mr/v1``, the Jupyter token as key); with ``mr-notebook
serve`` its URL (``MR_NOTEBOOK_API_KEY`` when it wants one); in-kernel, the in-kernel engine's HTTP endpoint,
started on demand from a background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mr_notebook.errors import EngineUnavailable

if TYPE_CHECKING:
    import openai

    from mr_notebook.client import Engine


def _current_engine() -> tuple[Engine, bool]:
    """(engine, whether the caller must close it)."""
    from mr_notebook.client import connect
    from mr_notebook.kernel import shell_engine

    shared = shell_engine()
    if shared is not None:
        return shared, False

    engine = connect()
    if engine.mode == "local":
        engine.close()
        raise EngineUnavailable(
            "No running engine to connect to: start one with `mr-notebook serve` (or in a notebook, "
            "`%load_ext mr_notebook`), or keep an engine yourself with `mr_notebook.client.connect()`."
        )
    return engine, True


def endpoint(engine: Engine | None = None) -> tuple[str, str]:
    """``(base_url, api_key)`` of the current engine's OpenAI-compatible API (base_url ends in ``/v1``)."""
    if engine is not None:
        return engine.endpoint()
    current, owned = _current_engine()
    try:
        return current.endpoint()
    finally:
        if owned:
            current.close()


def openai_client(engine: Engine | None = None, **kwargs: Any) -> openai.OpenAI:
    """An ``openai.OpenAI`` for the current engine; ``kwargs`` go to its constructor."""
    import openai

    base_url, api_key = endpoint(engine)
    return openai.OpenAI(base_url=base_url, api_key=api_key, **kwargs)


def async_openai_client(engine: Engine | None = None, **kwargs: Any) -> openai.AsyncOpenAI:
    """An ``openai.AsyncOpenAI`` for the current engine; ``kwargs`` go to its constructor."""
    import openai

    base_url, api_key = endpoint(engine)
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, **kwargs)
