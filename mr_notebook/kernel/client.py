"""OpenAI SDK clients (and the raw base URL + key) for the engine this kernel uses.

Under Jupyter that is the server's endpoint (``…/mr/v1``, the Jupyter token as key); with ``mr-notebook
serve`` its URL (``MR_NOTEBOOK_API_KEY`` when it wants one); in-kernel, the in-kernel engine's HTTP endpoint,
started on demand from a background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import openai

    from mr_notebook.client import Engine


def endpoint(engine: Engine | None = None) -> tuple[str, str]:
    """``(base_url, api_key)`` of the engine's OpenAI-compatible API (base_url ends in ``/v1``); the engine of
    this process (:mod:`mr_notebook.current`) unless given."""
    if engine is None:
        from mr_notebook import current

        engine = current.engine()
    return engine.endpoint()


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
