"""One renderer per table (``list``, ``ps``, ``df``, ``inspect``, ``import``), shared by the CLI, the magics and the
model manager widget.

A renderer takes the wire shape (the JSON every engine answers: Docker Model Runner's for ``list``/``inspect``,
``LoadedModel.to_json()`` for ``ps``, ``DiskUsage.to_json()`` for ``df``) and gives a view that is also the data:
:class:`Table` is the list of JSON rows, :class:`Record` the dict. Its ``repr`` is the aligned text the CLI prints
and a terminal shows; ``_repr_html_`` is the notebook's table. So the same operation shows the same columns
everywhere.

Cheap to import (the store package is imported only by the functions that format sizes), because
``%load_ext mr_notebook`` imports it through the magics.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mr_notebook.digests import short_id

MODEL_COLUMNS = ("MODEL NAME", "PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL ID", "CREATED", "CONTEXT", "SIZE")
PS_COLUMNS = ("MODEL NAME", "PID", "BACKEND", "MEMORY", "CONTEXT", "IN FLIGHT", "QUEUED", "LAST USED", "UNTIL")
IMPORT_COLUMNS = ("SOURCE", "MODEL NAME", "FILES", "SIZE", "WHERE")

NO_MODELS = (
    "No models stored yet. Pull one with `pull ai/smollm2`, or add a local file with `package --gguf PATH NAME`."
)
NOTHING_LOADED = "No model is loaded. Load one with `run MODEL`."


# ---------------------------------------------------------------------- views (data that shows itself)
class Table(list[dict[str, Any]]):
    """A list of JSON rows (the data) whose representation is a table of ``rows`` (the view)."""

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        columns: Sequence[str],
        rows: Sequence[Mapping[str, str]],
        empty: str = "Nothing to show.",
    ) -> None:
        super().__init__(data)
        self.columns = list(columns)
        self.rows = [dict(r) for r in rows]
        self.empty = empty

    def text(self) -> str:
        """Aligned plain text with a header row (an empty table still prints its header)."""
        return text_table(self.rows, self.columns)

    def __repr__(self) -> str:
        return self.text() if self.rows else self.empty

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(f"<td style='text-align:left'>{html.escape(str(row.get(c, '')))}</td>" for c in self.columns)
            + "</tr>"
            for row in self.rows
        )
        if not self.rows:
            body = f"<tr><td colspan='{len(self.columns)}'><i>{html.escape(self.empty)}</i></td></tr>"
        return f"<table class='mr-notebook'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Record(dict[str, Any]):
    """A JSON object (the data) shown as a two-column table of selected fields."""

    def __init__(self, data: Mapping[str, Any], fields: Sequence[tuple[str, str]]) -> None:
        super().__init__(data)
        self.fields = list(fields)

    def text(self) -> str:
        width = max((len(k) for k, _ in self.fields), default=0)
        return "\n".join(f"{k.ljust(width)}   {v}".rstrip() for k, v in self.fields)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
            f"{html.escape(v)}</td></tr>"
            for k, v in self.fields
        )
        return f"<table class='mr-notebook'><tbody>{rows}</tbody></table>"


# ---------------------------------------------------------------------- the tables
def model_table(models: Sequence[dict[str, Any]], now: float | None = None) -> Table:
    """``list``: one row per name of each model, like ``docker model list`` (remote engines' models too)."""
    return Table(models, MODEL_COLUMNS, model_rows(models, now), NO_MODELS)


def model_rows(models: Iterable[Mapping[str, Any]], now: float | None = None) -> list[dict[str, str]]:
    """The rows of :func:`model_table` (the widget shows the same cells)."""
    now = time.time() if now is None else now
    rows = []
    for model in models:
        config = model.get("config") or {}
        context = config.get("context_size")
        engine = config.get("engine")
        for tag in model.get("tags") or ["<none>"]:
            rows.append(
                {
                    "MODEL NAME": str(tag),
                    "PARAMETERS": str(config.get("parameters") or ""),
                    "QUANTIZATION": str(config.get("quantization") or ""),
                    "ARCHITECTURE": f"remote: {engine}" if engine else str(config.get("architecture") or ""),
                    "MODEL ID": "" if engine else short_id(str(model.get("id", ""))),
                    "CREATED": ago(model.get("created"), now),
                    "CONTEXT": str(context) if context else "",
                    "SIZE": str(config.get("size") or ""),
                }
            )
    return rows


def ps_table(loaded: Sequence[dict[str, Any]], now: float | None = None) -> Table:
    """``ps``: loaded models (``LoadedModel.to_json()`` rows; times as ISO strings or Unix seconds)."""
    now = time.time() if now is None else now
    rows = []
    for item in loaded:
        keep_alive = item.get("keep_alive")
        expires = _unix(item.get("expires_at"))
        if isinstance(keep_alive, int | float) and keep_alive < 0:
            until = "forever"
        elif expires is not None:
            until = ago(expires, now)
        else:
            until = "while busy"
        rows.append(
            {
                "MODEL NAME": str(item.get("model", "")),
                "PID": str(item.get("pid") or ""),
                "BACKEND": str(item.get("backend_name") or "llama.cpp"),
                "MEMORY": size_text(item.get("memory") or 0) if item.get("memory") else "",
                "CONTEXT": str(item.get("context_size") or ""),
                "IN FLIGHT": str(item.get("in_flight", 0)),
                "QUEUED": str(item.get("queued", 0)),
                "LAST USED": ago(item.get("last_used"), now),
                "UNTIL": until,
            }
        )
    return Table(loaded, PS_COLUMNS, rows, NOTHING_LOADED)


def df_record(usage: Mapping[str, Any]) -> Record:
    """``df``: what the store's models and partial downloads use (``DiskUsage.to_json()``)."""
    fields = [("Models", str(usage.get("models", "")))]
    fields += [
        (label, size_text(usage.get(key, 0)))
        for key, label in (("blobs", "Model files"), ("partials", "Partial downloads"), ("total", "Total"))
    ]
    return Record(usage, fields)


def inspect_record(model: Mapping[str, Any]) -> Record:
    """``inspect``: a model's names, id, creation time, configuration and settings."""
    config = model.get("config") or {}
    created = _unix(model.get("created"))
    fields = [
        ("Names", ", ".join(model.get("tags") or [])),
        ("ID", str(model.get("id", ""))),
        ("Created", datetime.fromtimestamp(created).isoformat(sep=" ") if created else ""),
    ]
    for key in ("format", "architecture", "parameters", "quantization", "size", "context_size", "engine"):
        if config.get(key) not in (None, ""):
            fields.append((key.replace("_", " ").capitalize(), str(config[key])))
    for key, value in sorted((model.get("settings") or {}).items()):
        fields.append((f"Setting {key}", str(value)))
    return Record(model, fields)


def found_table(found: Sequence[dict[str, Any]], empty: str) -> Table:
    """``import`` without a source: the models other tools hold (``Found.to_json()``)."""
    rows = [
        {
            "SOURCE": str(f.get("source", "")),
            "MODEL NAME": str(f.get("name", "")),
            "FILES": str(len(f.get("files") or [])),
            "SIZE": size_text(int(f.get("size") or 0)),
            "WHERE": str(f.get("location", "")),
        }
        for f in found
    ]
    return Table(found, IMPORT_COLUMNS, rows, empty)


# ---------------------------------------------------------------------- what a verb says (every interface alike)
def added_text(model: Mapping[str, Any]) -> str:
    """``package``'s answer (the stored model) in one sentence."""
    config = model.get("config") or {}
    names = ", ".join(model.get("tags") or []) or short_id(str(model.get("id", "")))
    return (
        f"Model {names} added ({short_id(str(model.get('id', '')))}, {config.get('parameters', '?')} parameters, "
        f"{config.get('quantization', '?')}, {config.get('size', '?')})."
    )


def removal_lines(removal: Iterable[Mapping[str, Any]]) -> list[str]:
    """``rm``'s answer (Docker's ``[{"Untagged": name}, {"Deleted": id}]``) as Docker prints it."""
    return [f"{key}: {value}" for item in removal for key, value in item.items()]


def configured_text(done: Mapping[str, Any]) -> str:
    """``configure``'s answer (``{"model", "settings", "reloaded", "pending"}``) in one sentence."""
    settings = ", ".join(f"{k}={v}" for k, v in sorted((done.get("settings") or {}).items())) or "defaults"
    if done.get("reloaded"):
        applies = "its idle worker was reloaded with them"
    elif done.get("pending"):
        applies = "its busy worker reloads with them once its requests finish"
    else:
        applies = "they apply at its next load"
    return f"Model {done.get('model')} configured ({settings}); {applies}."


def pruned_text(done: Mapping[str, Any]) -> str:
    return f"Removed {done.get('files', 0)} unused file(s), reclaimed {size_text(done.get('bytes', 0))}."


def purged_text(done: Mapping[str, Any]) -> str:
    unloaded = f" (unloaded {done['unloaded']} first)" if done.get("unloaded") else ""
    return f"Deleted {done.get('models', 0)} model(s), reclaimed {size_text(done.get('bytes', 0))}{unloaded}."


# ---------------------------------------------------------------------- cells
def size_text(value: Any) -> str:
    """Bytes as ``"1.50 GiB"``; anything else as its text."""
    from mr_notebook.store import format_bytes

    return format_bytes(int(value)) if isinstance(value, int | float) else str(value or "")


def _unix(value: Any) -> float | None:
    """Unix seconds from a number (in-process) or an ISO 8601 string (over HTTP); None when absent."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if value else None
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def ago(timestamp: Any, now: float | None = None) -> str:
    """A time → ``"3 minutes ago"`` (Docker's CREATED column), ``"in 5 minutes"`` when in the future."""
    moment = _unix(timestamp)
    if moment is None:
        return ""
    delta = (time.time() if now is None else now) - moment
    seconds = int(abs(delta))
    for size, unit in (
        (86400 * 365, "year"),
        (86400 * 30, "month"),
        (86400 * 7, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ):
        if seconds >= size or unit == "second":
            count = seconds // size
            if unit == "second" and count < 5:
                return "just now"
            words = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {words}" if delta < 0 else f"{words} ago"
    return ""  # unreachable: the seconds step always answers


def text_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text table with a header row (empty rows still print the header)."""
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols]
    lines = ["   ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(str(row.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    return "\n".join(lines)
