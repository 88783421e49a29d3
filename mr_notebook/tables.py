"""Rows and plain-text tables shared by the CLI and the notebook display (``list``, ``ps``, ``df``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mr_notebook.store.gguf_meta import format_bytes

MODEL_COLUMNS = ("MODEL NAME", "PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL ID", "CREATED", "CONTEXT", "SIZE")
PS_COLUMNS = ("MODEL NAME", "PID", "MEMORY", "CONTEXT", "KEEP ALIVE", "UNTIL", "IN FLIGHT", "QUEUED")


def ago(timestamp: float, now: float | None = None) -> str:
    """Unix time → ``"3 minutes ago"`` (what ``docker model list`` shows)."""
    seconds = max(0, int((time.time() if now is None else now) - timestamp))
    for size, unit in (
        (86400 * 365, "year"),
        (86400 * 30, "month"),
        (86400 * 7, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
    ):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now" if seconds < 5 else f"{seconds} seconds ago"


def model_rows(models: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One row per name of each model (Docker's JSON shape in), like ``docker model list``."""
    rows = []
    for model in models:
        config = model.get("config", {})
        context = config.get("context_size")
        short_id = str(model.get("id", "")).removeprefix("sha256:")[:12]
        for tag in model.get("tags") or ["<none>"]:
            rows.append(
                {
                    "MODEL NAME": tag,
                    "PARAMETERS": str(config.get("parameters", "")),
                    "QUANTIZATION": str(config.get("quantization", "")),
                    "ARCHITECTURE": str(config.get("architecture", "")),
                    "MODEL ID": short_id,
                    "CREATED": ago(float(model.get("created", 0))),
                    "CONTEXT": str(context) if context else "",
                    "SIZE": str(config.get("size", "")),
                }
            )
    return rows


def _unix(value: Any) -> float | None:
    """A time as unix seconds, from a number (in-process) or an ISO 8601 string (over HTTP)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    from datetime import datetime

    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def ps_rows(loaded: Iterable[Mapping[str, Any]], now: float | None = None) -> list[dict[str, str]]:
    """Rows for ``ps`` from ModelStatus JSON."""
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
    return [
        {"TYPE": "Models", "COUNT": str(usage.get("models", 0)), "SIZE": format_bytes(usage.get("blobs", 0))},
        {"TYPE": "Partial downloads", "COUNT": "", "SIZE": format_bytes(usage.get("partials", 0))},
        {"TYPE": "Total", "COUNT": "", "SIZE": format_bytes(usage.get("total", 0))},
    ]


def text_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str] | None = None) -> str:
    """Aligned plain-text table with a header row (empty rows still print the header)."""
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    widths = [max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in cols]
    lines = ["   ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("   ".join(str(row.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    return "\n".join(lines)
