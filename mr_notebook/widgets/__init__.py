"""Notebook widgets: :func:`chat` (a ChatWidget) and :func:`manager` (a ModelManager).

Why anywidget: a widget is a Python model (traitlets) plus one ES module and a CSS file shipped in this
package (``static/``). Every front end that runs ipywidgets 8 — JupyterLab 4, Notebook 7, VS Code — loads
that module through anywidget's generic front end, so there is no build step, no labextension to install or
keep in sync, and nothing fetched from a CDN (Markdown: ``static/markdown.js`` over markdown-it and DOMPurify,
vendored in ``static/vendor``). An
ipywidgets composite could not stream Markdown, pin the scroll position or confirm in place without a
custom front end anyway.

Both widgets use the engine the magics use (``%model``'s connection: the Jupyter server's shared engine,
a running ``mr-notebook serve``, or the in-kernel one), unless given ``engine=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mr_notebook.errors import ChatBusy, PullRunning
from mr_notebook.widgets.chat import ChatWidget
from mr_notebook.widgets.manager import ModelManager

if TYPE_CHECKING:
    from mr_notebook.client import Engine

__all__ = ["ChatBusy", "ChatWidget", "ModelManager", "PullRunning", "chat", "manager"]


def chat(model: str | None = None, *, engine: Engine | None = None, **settings: Any) -> ChatWidget:
    """A chat widget for ``model`` (default: the first stored model); ``settings`` set traits such as
    ``system``, ``temperature`` or ``max_tokens``."""
    return ChatWidget(model, engine=engine, **settings)


def manager(*, engine: Engine | None = None, refresh_interval: float = 5.0) -> ModelManager:
    """A model manager widget: stored models, pull, load, unload, remove, disk and memory totals."""
    return ModelManager(engine=engine, refresh_interval=refresh_interval)
