"""``%%chat --logprobs``: the reply with each token shaded by its probability; hovering shows the alternatives.

Every token (and every alternative in the hover text) is model output, so each is HTML-escaped, attributes
included; the view is plain inline HTML and CSS (no script, no remote asset). The first ``TOKEN_VIEW_LIMIT``
tokens are shaded; the rest of a longer reply follows as plain text (the same bound as the chat widget's).
"""

from __future__ import annotations

import html
import math
from typing import Any

from mr_notebook.conversation import TOKEN_VIEW_LIMIT

#: Alternatives asked for and shown per token.
TOP_LOGPROBS = 5


def _probability(logprob: Any) -> float:
    try:
        return math.exp(float(logprob)) if logprob is not None else 0.0
    except (TypeError, ValueError, OverflowError):
        return 0.0


def _percent(p: float) -> str:
    return f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%"


def _shade(p: float) -> str:
    # Red (unsure) through yellow to green (sure); light enough that the text stays readable.
    return f"hsla({round(120 * p)}, 85%, 55%, 0.35)"


class TokenView:
    """The reply (``str(view)`` / text/plain) and its tokens as shaded HTML spans (text/html)."""

    def __init__(self, text: str, entries: list[dict[str, Any]]) -> None:
        self.text = text
        self.entries = entries

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text)

    def _repr_html_(self) -> str:
        spans = []
        joined = ""
        for entry in self.entries[:TOKEN_VIEW_LIMIT]:
            token = str(entry.get("token", ""))
            p = _probability(entry.get("logprob"))
            lines = [f"{token!r}: {_percent(p)}"]
            for alt in entry.get("top_logprobs") or []:
                lines.append(f"{str(alt.get('token', ''))!r}: {_percent(_probability(alt.get('logprob')))}")
            title = html.escape("\n".join(lines), quote=True).replace("\n", "&#10;")
            spans.append(
                f"<span class='mr-token' style='background:{_shade(p)}' title=\"{title}\">"
                f"{html.escape(token, quote=True)}</span>"
            )
            joined += token
        if spans and len(self.text) > len(joined) and self.text.startswith(joined):
            spans.append(f"<span style='opacity:.7'>{html.escape(self.text[len(joined) :], quote=True)}</span>")
        legend = (
            "<div style='font-size:smaller;opacity:.7'>Tokens shaded by probability (green: sure, red: unsure); "
            "hover a token for the alternatives.</div>"
        )
        body = "".join(spans) if spans else html.escape(self.text, quote=True)
        return f"<div class='mr-notebook-tokens' style='white-space:pre-wrap'>{body}</div>{legend}"
