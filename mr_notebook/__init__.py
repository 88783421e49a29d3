"""mr_notebook: Docker Model Runner inside Jupyter.

Importing this package is cheap and imports no IPython, Jupyter, Tornado or llama.cpp code; the
interfaces (magics, widgets, server extension, CLI) load what they need when first used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "async_openai_client",
    "chat",
    "endpoint",
    "load_ipython_extension",
    "manager",
    "map",
    "openai_client",
]

# Public helpers that live in interface modules: resolved on first access so `import mr_notebook` stays light.
_LAZY = {
    "openai_client": "mr_notebook.kernel.client",
    "async_openai_client": "mr_notebook.kernel.client",
    "endpoint": "mr_notebook.kernel.client",
    "chat": "mr_notebook.widgets",
    "manager": "mr_notebook.widgets",
    "map": "mr_notebook.workflows",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mr_notebook' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext mr_notebook`: register `%model` and `%%chat`."""
    from mr_notebook.kernel import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from mr_notebook.kernel import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Jupyter server discovers the extension app here (enabled by jupyter-config/ on install)."""
    from mr_notebook.serverext import MrNotebookApp

    return [{"module": "mr_notebook", "app": MrNotebookApp}]
