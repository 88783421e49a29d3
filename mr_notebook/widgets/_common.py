"""What both widgets share: finding the engine, turning errors into text, reading stored model names."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mr_notebook.errors import MrNotebookError

if TYPE_CHECKING:
    from mr_notebook.client import Engine

log = logging.getLogger(__name__)

#: The JavaScript and CSS shipped inside the package (nothing is fetched at run time).
STATIC = Path(__file__).parent / "static"


def bundle(*names: str) -> str:
    """One ES module from several files in ``static/``: anywidget loads a single module and we use no bundler."""
    return "\n".join((STATIC / name).read_text(encoding="utf-8") for name in names)


def current_engine() -> tuple[Engine, bool]:
    """(engine, whether the widget owns it): the magics' engine in IPython, else a fresh connection."""
    from mr_notebook.client import connect
    from mr_notebook.kernel import shell_engine

    shared = shell_engine()
    if shared is not None:
        return shared, False

    return connect(), True


def error_text(error: BaseException) -> str:
    """What the user reads for an error: our messages already say what to do next."""
    if isinstance(error, MrNotebookError):
        return f"{type(error).__name__}: {error}"
    return f"{type(error).__name__}: {error} (unexpected; see the kernel log for details)"


def engine_label(engine: Engine) -> str:
    """Where the engine is, for the widget's footer."""
    url = engine.url
    return f"{engine.mode} engine · {url}" if url else f"{engine.mode} engine ({engine.source})"


def model_names(models: list[dict[str, Any]]) -> list[str]:
    """Every name (tag) of the stored models, sorted; one model can have several names."""
    return sorted({str(tag) for model in models for tag in model.get("tags", [])})
