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


#: The maintained libraries markdown.js uses, vendored in ``static/vendor`` (see its README): the name each
#: is bound to in the widget module, and its file.
MARKDOWN_LIBRARIES = {"markdownit": "vendor/markdown-it.min.js", "DOMPurify": "vendor/purify.min.js"}


def vendored(name: str, path: str) -> str:
    """A UMD library from ``static/`` as ``const name = …``.

    It runs in a function scope with CommonJS ``module``/``exports``, so it takes its CommonJS branch and
    defines no global in the notebook page (nor meets a page's AMD ``define``).
    """
    source = (STATIC / path).read_text(encoding="utf-8")
    return (
        f"const {name} = (() => {{\nconst module = {{ exports: {{}} }};\nconst exports = module.exports;\n"
        f"{source}\nreturn module.exports;\n}})();"
    )


def bundle(*names: str, libraries: dict[str, str] | None = None) -> str:
    """One ES module from vendored ``libraries`` and files in ``static/``: anywidget loads a single module and
    we use no bundler."""
    parts = [vendored(name, path) for name, path in (libraries or {}).items()]
    parts += [(STATIC / name).read_text(encoding="utf-8") for name in names]
    return "\n".join(parts)


def current_engine() -> tuple[Engine, bool]:
    """(engine, whether the widget owns it): the engine of this process, shared with the magics."""
    from mr_notebook import current

    return current.engine(), False


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
