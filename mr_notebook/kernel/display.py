"""How magics show things: model text as safe Markdown, streamed replies, short errors.

Tables are returned, not printed: ``%model list`` gives a :class:`~mr_notebook.tables.Table` (a ``list`` of
dicts, rendered by the one renderer the CLI uses too) whose representation is the table, HTML with a text/plain
fallback in a notebook and aligned text in a terminal. As the last line of a cell it is shown once (IPython's
Out); ``models = %model list`` shows nothing and keeps the data; ``display(%model list)`` shows it anywhere.
"""

from __future__ import annotations

import functools
import html
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from mr_notebook.errors import MrNotebookError

_RED, _RESET = "\x1b[31m", "\x1b[0m"


class SafeMarkdown:
    """Model text shown as Markdown that cannot run: use it for every display of text a model wrote.

    Model text is attacker-written, and JupyterLab renders raw HTML inside the Markdown of trusted outputs
    without sanitising it. So this is not ``text/markdown``: the text is rendered to HTML here by
    markdown-it-py with raw HTML off (it shows as text) and links limited to http(s)/mailto, images become
    links (a remote image would send the conversation to any URL a model names), and nh3 (ammonia) then keeps
    only a short list of tags and attributes. Plain-text front ends get the text itself. See
    :func:`markdown_html` for the bounds on the work of one render.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return markdown_html(self.text)

    def __repr__(self) -> str:
        return self.text


#: The name the magics import (our own texts, such as `%model run`'s, go through the same safe path).
MarkdownText = SafeMarkdown

#: Only this much of a text is rendered as Markdown, the rest follows as plain text: bounds one render
#: (markdown-it-py renders 100,000 characters of ordinary Markdown in about 1.3 s, of the most costly input
#: we know in about 5 s; bench/markdown.py). The chat widget's markdown.js uses the same limits.
MARKDOWN_MAX_CHARS = 100_000
#: markdown-it drops whatever nests deeper than this; such a text is shown as plain text instead. It also
#: bounds how far each unclosed ``[`` is probed: at markdown-it's default of 100, 100,000 characters of
#: ``[a`` took 25 s to render, at 20 (its CommonMark preset's value) 3.4 s. Real replies nest far less.
MARKDOWN_MAX_NESTING = 20
_TAGS = {
    *("p", "br", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "hr", "a"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td"),
}
_LINK = re.compile(r"(https?|mailto):", re.IGNORECASE)


def markdown_html(text: str) -> str:
    """Sanitised HTML for Markdown written by a model (what :class:`SafeMarkdown` shows)."""
    md = _markdown()
    tokens = md.parse(text[:MARKDOWN_MAX_CHARS])
    if any(token.level >= MARKDOWN_MAX_NESTING - 1 for token in tokens):
        return _plain(text)
    rendered: str = _cleaner().clean(md.renderer.render(tokens, md.options, {}))
    return rendered + _plain(text[MARKDOWN_MAX_CHARS:]) if len(text) > MARKDOWN_MAX_CHARS else rendered


def _plain(text: str) -> str:
    return f"<div style='white-space:pre-wrap'>{html.escape(text)}</div>"


# Built once per process (both are immutable once configured) and only when a reply is first shown, so that
# `%load_ext mr_notebook` does not import them.
@functools.cache
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    md = MarkdownIt("js-default", {"html": False, "linkify": True, "breaks": True, "maxNesting": MARKDOWN_MAX_NESTING})
    # markdown-it's own check only refuses javascript:, vbscript:, file: and some data: URLs.
    md.validateLink = lambda url: _LINK.match(url.strip()) is not None  # type: ignore[method-assign]
    md.add_render_rule("image", _image_as_link)
    return md


def _image_as_link(self: Any, tokens: Sequence[Any], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    source = str(token.attrGet("src") or "")
    label = self.renderInlineAsText(token.children or [], options, env) or source
    return f'<a href="{html.escape(source)}">{html.escape(label)}</a>'


@functools.cache
def _cleaner() -> Any:
    import nh3

    return nh3.Cleaner(
        tags=_TAGS,
        clean_content_tags={"script", "style"},
        attributes={"a": {"href", "title"}, "ol": {"start"}},
        url_schemes={"http", "https", "mailto"},
        url_relative="deny",
        link_rel="noopener noreferrer nofollow",
        set_tag_attribute_values={"a": {"target": "_blank"}},
    )


# ---------------------------------------------------------------------- errors, streaming, progress
def short_error(error: MrNotebookError) -> MrNotebookError:
    """Mark a user error so IPython shows one red line instead of a traceback (type kept for `except`)."""
    text = f"{_RED}{type(error).__name__}: {error}{_RESET}"
    error._render_traceback_ = lambda: [text]  # type: ignore[attr-defined]
    return error


def show(obj: Any, **kwargs: Any) -> Any:
    """IPython's ``display`` (typed; returns the DisplayHandle when ``display_id=True``)."""
    from IPython.display import display

    return display(obj, **kwargs)  # type: ignore[no-untyped-call]


def rich_frontend(shell: Any) -> bool:
    """True in a Jupyter kernel (Markdown, widgets, display updates); False in terminal IPython."""
    return getattr(shell, "kernel", None) is not None


class StreamView:
    """Shows a growing reply: :class:`SafeMarkdown` updated in place (display id) in a notebook, raw text
    otherwise."""

    #: Updates per second at most; each one renders the whole reply again.
    RATE = 20.0

    def __init__(self, rich: bool, render: Callable[[str], Any] = SafeMarkdown) -> None:
        self.rich = rich
        #: What a notebook shows for the text so far (``%%chat`` puts the model's reasoning above it).
        self.render = render
        self._handle: Any = None
        self._last = 0.0
        self._cost = 0.0
        self._written = 0

    def update(self, text: str) -> None:
        if not self.rich:
            sys.stdout.write(text[self._written :])
            sys.stdout.flush()
            self._written = len(text)
            return
        # Renders are spaced out by what the last one cost too (at most a quarter of the time goes to
        # rendering), so a long reply does not slow the stream down.
        now = time.monotonic()
        if self._handle is None:
            self._handle = show(self.render(text), display_id=True)
        elif now - self._last >= max(1.0 / self.RATE, 3 * self._cost):
            self._handle.update(self.render(text))
        else:
            return
        self._last = time.monotonic()
        self._cost = self._last - now

    def finish(self, text: str, metadata: dict[str, Any] | None = None) -> None:
        """Leave the final text (rendered once more in a notebook, with ``metadata`` on the output; a newline
        in a terminal)."""
        if not self.rich:
            self.update(text)
            if text and not text.endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.flush()
        elif self._handle is None:
            show(self.render(text), metadata=metadata)
        else:
            self._handle.update(self.render(text), metadata=metadata)
