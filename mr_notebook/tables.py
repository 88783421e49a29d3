"""Rows and plain-text tables shared by the CLI and the notebook display (``list``, ``ps``, ``df``).

Cheap to import (the store package is imported only by the functions that format sizes), because
``%load_ext mr_notebook`` imports it through the magics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from mr_notebook.digests import short_id

MODEL_COLUMNS = ("MODEL NAME", "PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL ID", "CREATED", "CONTEXT", "SIZE")
PS_COLUMNS = ("MODEL NAME", "PID", "MEMORY", "CONTEXT", "KEEP ALIVE", "UNTIL", "IN FLIGHT", "QUEUED")


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


def model_rows(models: Iterable[Mapping[str, Any]], now: float | None = None) -> list[dict[str, str]]:
    """One row per name of each model (Docker's JSON shape in), like ``docker model list``."""
    now = time.time() if now is None else now
    rows = []
    for model in models:
        config = model.get("config") or {}
        context = config.get("context_size")
        model_id = short_id(str(model.get("id", "")))
        created = ago(model.get("created"), now)
        for tag in model.get("tags") or ["<none>"]:
            rows.append(
                {
                    "MODEL NAME": tag,
                    "PARAMETERS": str(config.get("parameters") or ""),
                    "QUANTIZATION": str(config.get("quantization") or ""),
                    "ARCHITECTURE": str(config.get("architecture") or ""),
                    "MODEL ID": model_id,
                    "CREATED": created,
                    "CONTEXT": str(context) if context else "",
                    "SIZE": str(config.get("size") or ""),
                }
            )
    return rows


def ps_rows(loaded: Iterable[Mapping[str, Any]], now: float | None = None) -> list[dict[str, str]]:
    """Rows for ``ps`` from ModelStatus JSON."""
    from mr_notebook.store import format_bytes

    now = time.time() if now is None else now
    rows = []
    for item in loaded:
        keep_alive = float(item.get("keep_alive", 0))
        expires = _unix(item.get("expires_at"))
        if keep_alive < 0:
            until = "forever"
        elif expires is None:
            until = "while busy"
        else:
            until = f"in {max(0, int(expires - now))}s"
        rows.append(
            {
                "MODEL NAME": str(item.get("model", "")),
                "PID": str(item.get("pid", "")),
                "MEMORY": format_bytes(int(item.get("memory", 0))),
                "CONTEXT": str(item.get("context_size", "")),
                "KEEP ALIVE": "forever" if keep_alive < 0 else f"{keep_alive:g}s",
                "UNTIL": until,
                "IN FLIGHT": str(item.get("in_flight", 0)),
                "QUEUED": str(item.get("queued", 0)),
            }
        )
    return rows


def df_rows(usage: Mapping[str, int]) -> list[dict[str, str]]:
    """Rows for ``df``: what the store's blobs and partial downloads use."""
    from mr_notebook.store import format_bytes

    return [
        {"TYPE": "Models", "COUNT": str(usage.get("models", 0)), "SIZE": format_bytes(usage.get("blobs", 0))},
        {"TYPE": "Partial downloads", "COUNT": "", "SIZE": format_bytes(usage.get("partials", 0))},
        {"TYPE": "Total", "COUNT": "", "SIZE": format_bytes(usage.get("total", 0))},
    ]


IMPORT_COLUMNS = ("SOURCE", "MODEL NAME", "FILES", "SIZE", "WHERE")


def found_rows(found: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows for ``import`` without a source: the models other tools hold (``Found.to_json()``)."""
    from mr_notebook.store import format_bytes

    return [
        {
            "SOURCE": str(f.get("source", "")),
            "MODEL NAME": str(f.get("name", "")),
            "FILES": str(len(f.get("files") or [])),
            "SIZE": format_bytes(int(f.get("size") or 0)),
            "WHERE": str(f.get("location", "")),
        }
        for f in found
    ]


def text_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text table with a header row (empty rows still print the header)."""
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols]
    lines = ["   ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(str(row.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    return "\n".join(lines)
