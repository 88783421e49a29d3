"""Notebook context for prompts: bounded previews of values (``{df}``), the last error (``--error``), and the
first code block of a reply (``--insert``)."""

from __future__ import annotations

import linecache
import re
import sys
import traceback
from collections.abc import Mapping
from typing import Any

from IPython.core.error import UsageError

#: Previews stay small so a DataFrame of a million rows costs a few hundred tokens, not the context window.
PREVIEW_ROWS = 5
PREVIEW_COLUMNS = 20
MAX_ITEMS = 20
MAX_CHARS = 2000
CELL_CHARS = 60
TRACEBACK_CHARS = 4000
SOURCE_CHARS = 4000


def _clip(text: str, limit: int, what: str = "characters") -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated: {limit} of {len(text)} {what}]"


def _cell(value: Any) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _markdown_table(frame: Any) -> str:
    columns = [str(c) for c in frame.columns]
    head = "| " + " | ".join(["", *map(_cell, columns)]) + " |"
    rule = "|" + "---|" * (len(columns) + 1)
    rows = [
        "| " + " | ".join([_cell(index), *(_cell(v) for v in row)]) + " |"
        for index, row in zip(frame.index, frame.itertuples(index=False, name=None), strict=True)
    ]
    return "\n".join([head, rule, *rows])


def _frame_preview(frame: Any) -> str:
    rows, columns = frame.shape
    shown = frame.iloc[:PREVIEW_ROWS, :PREVIEW_COLUMNS]
    dtypes = ", ".join(f"{c}: {t}" for c, t in list(frame.dtypes.items())[:PREVIEW_COLUMNS])
    notes = []
    if columns > PREVIEW_COLUMNS:
        notes.append(f"first {PREVIEW_COLUMNS} of {columns} columns")
    if rows > PREVIEW_ROWS:
        notes.append(f"first {PREVIEW_ROWS} of {rows} rows")
    note = f"\n({'; '.join(notes)})" if notes else ""
    return f"DataFrame with {rows} rows × {columns} columns; dtypes: {dtypes}\n\n{_markdown_table(shown)}{note}"


def preview(value: Any) -> str:
    """How a notebook value appears in a ``%%chat`` prompt: bounded, with a note where something was cut."""
    pandas = sys.modules.get("pandas")  # a pandas object means pandas is loaded; never import it for this
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return _frame_preview(value)
    if pandas is not None and isinstance(value, pandas.Series):
        return _frame_preview(value.to_frame(name=str(value.name) if value.name is not None else "value"))
    if isinstance(value, list | tuple) and len(value) > MAX_ITEMS:
        shown = _clip(repr(type(value)(value[:MAX_ITEMS])), MAX_CHARS)
        return f"{shown} … [{len(value) - MAX_ITEMS} more items, {len(value)} in all]"
    if isinstance(value, str):
        return _clip(value, MAX_CHARS)
    if isinstance(value, Mapping | list | tuple | set):
        return _clip(repr(value), MAX_CHARS)
    return _clip(str(value), MAX_CHARS)


# ---------------------------------------------------------------------- --error
def _cell_source(tb: Any) -> str:
    """The source of the cell the exception came from: the outermost frame whose file is a notebook cell
    (IPython names cells ``<ipython-input-N-…>``, ipykernel ``…/ipykernel_PID/HASH.py``; both are in linecache)."""
    for frame, _ in traceback.walk_tb(tb):
        filename = frame.f_code.co_filename
        if filename.startswith("<ipython-input-") or "/ipykernel_" in filename:
            return "".join(linecache.getlines(filename))
    return ""


def last_error() -> tuple[BaseException, str, str]:
    """(exception, plain traceback text, source of the failing cell) of this kernel's last error."""
    value = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if value is None:
        raise UsageError("%%chat --error: no cell has raised an exception in this kernel yet.")
    tb = value.__traceback__ or getattr(sys, "last_traceback", None)
    text = "".join(traceback.format_exception(type(value), value, tb))
    return value, _clip(text[-TRACEBACK_CHARS * 2 :], TRACEBACK_CHARS), _clip(_cell_source(tb), SOURCE_CHARS)


def error_prompt(user_text: str) -> str:
    """The user message of ``%%chat --error``: the last exception and the failing cell, then the user's words."""
    value, tb_text, source = last_error()
    parts = [
        "My notebook cell raised an exception. Explain the cause briefly and give a fixed version of the cell "
        "as one Python code block.",
        f"Exception: {type(value).__name__}: {_clip(str(value), 500)}",
    ]
    if source.strip():
        parts.append(f"Cell source:\n```python\n{source.rstrip()}\n```")
    parts.append(f"Traceback:\n```\n{tb_text.rstrip()}\n```")
    if user_text.strip():
        parts.append(user_text.strip())
    return "\n\n".join(parts)


# ---------------------------------------------------------------------- --insert
_FENCE = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*([\w+.-]*)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)


def first_code_block(text: str) -> str | None:
    """The body of the reply's first fenced code block (```lang … ```), or None."""
    found = _FENCE.search(text)
    return found.group(3).rstrip("\n") if found is not None else None
