"""A chat reply as a notebook shows it: the model's reasoning collapsed (``<details>``) above the answer.

Both are model text, so both go through the one safe Markdown renderer (:func:`markdown_html`: raw HTML shown
as text, cleaned by nh3); the markup around them is ours and fixed.
"""

from __future__ import annotations

from mr_notebook.kernel.display import markdown_html

_DETAILS = "<details class='mr-notebook-reasoning' style='margin-bottom:0.5em;opacity:.8'>"
_SUMMARY = "<summary style='cursor:pointer;font-style:italic'>{label}</summary>"
_BODY = "<div style='border-left:3px solid #8886;padding-left:8px;margin-top:4px'>{html}</div>"


def reasoning_label(reasoning: str, thinking: bool) -> str:
    """The summary line: grows while the model thinks, so a collapsed block still shows progress."""
    words = len(reasoning.split())
    return f"Thinking… ({words} words)" if thinking else f"Reasoning ({words} words)"


def reply_html(text: str, reasoning: str = "", *, streaming: bool = False) -> str:
    """The answer as safe HTML, with the reasoning (if any) collapsed above it."""
    answer = markdown_html(text) if text else ""
    if not reasoning:
        return answer
    label = reasoning_label(reasoning, thinking=streaming and not text)
    details = _DETAILS + _SUMMARY.format(label=label) + _BODY.format(html=markdown_html(reasoning)) + "</details>"
    return details + answer


class Reply:
    """``text/html``: the reasoning collapsed above the answer; ``text/plain``: the answer (as ``_chat`` is)."""

    def __init__(self, text: str, reasoning: str = "", *, streaming: bool = False) -> None:
        self.text, self.reasoning, self.streaming = text, reasoning, streaming

    def _repr_html_(self) -> str:
        return reply_html(self.text, self.reasoning, streaming=self.streaming)

    def __repr__(self) -> str:
        return self.text
