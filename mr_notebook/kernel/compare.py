"""``%%chat --models a,b`` and ``%%chat -n 3``: several replies streamed side by side with their numbers."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mr_notebook.client import ChatStream, Engine
from mr_notebook.kernel.display import rich_frontend, show
from mr_notebook.kernel.reply import reply_html


@dataclass
class Run:
    """One column: a model (and seed) asked the conversation; filled in by its thread."""

    label: str
    model: str
    params: dict[str, Any]
    parts: list[str] = field(default_factory=list)
    started: float = 0.0
    first_token: float | None = None
    ended: float | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    error: BaseException | None = None
    stream: ChatStream | None = None
    #: Opens this run's stream when it is one choice of a shared ``n`` request; None: a request of its own.
    opener: Callable[[], ChatStream] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return self.stream.reasoning if self.stream is not None else ""

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def tokens(self) -> int | None:
        return (self.usage or {}).get("completion_tokens")

    @property
    def rate(self) -> float | None:
        if self.tokens is None or self.first_token is None or self.ended is None or self.tokens < 2:
            return None
        spent = self.ended - self.first_token
        # The first token's time is TTFT; the rate counts the tokens generated after it.
        return (self.tokens - 1) / spent if spent > 0 else None

    def stats(self) -> str:
        if self.error is not None:
            return f"error: {type(self.error).__name__}"
        items = []
        if self.tokens is not None:
            items.append(f"{self.tokens} tokens")
        if self.ttft is not None:
            items.append(f"TTFT {self.ttft * 1000:.0f} ms")
        if self.rate is not None:
            items.append(f"{self.rate:.1f} tok/s")
        if self.ended is None:
            items.append("streaming…")
        return " · ".join(items)


class CompareView:
    """Columns in a notebook (one display, updated in place); labelled blocks in a terminal."""

    RATE = 10.0

    def __init__(self, runs: list[Run]) -> None:
        self.runs = runs

    def __repr__(self) -> str:
        blocks = [f"── {run.label} ({run.stats()})\n{self._body(run)}" for run in self.runs]
        return "\n\n".join(blocks)

    @staticmethod
    def _body(run: Run) -> str:
        if run.error is not None:
            return f"{type(run.error).__name__}: {run.error}"
        return run.text

    def _repr_html_(self) -> str:
        # Model text goes through the one safe Markdown renderer (sanitised, never live markup), the reasoning
        # collapsed above the answer.
        columns = "".join(
            "<div style='flex:1 1 0;min-width:12em;border:1px solid #8884;border-radius:4px;padding:6px'>"
            f"<div style='font-weight:bold'>{html.escape(run.label)}</div>"
            f"<div style='font-size:smaller;opacity:.7'>{html.escape(run.stats())}</div>"
            f"<div style='margin-top:4px'>{reply_html(self._body(run), run.reasoning, streaming=run.ended is None)}"
            "</div></div>"
            for run in self.runs
        )
        return f"<div class='mr-notebook-compare' style='display:flex;gap:8px;align-items:flex-start'>{columns}</div>"


def run_all(
    shell: Any,
    engine: Engine,
    runs: list[Run],
    messages: list[dict[str, Any]],
    metadata: Callable[[], dict[str, Any]],
) -> None:
    """Stream every run concurrently into one view; an interrupt closes every stream. ``metadata()`` is
    called once all runs are done (provenance with TTFT and tok/s) and saved with the final view."""

    def produce(run: Run) -> None:
        run.started = time.monotonic()
        try:
            run.stream = (
                run.opener() if run.opener is not None else engine.chat_stream(run.model, messages, **run.params)
            )
            with run.stream:
                for delta in run.stream:
                    if run.first_token is None:
                        run.first_token = time.monotonic()
                    run.parts.append(delta)
            run.usage, run.finish_reason = run.stream.usage, run.stream.finish_reason
        except Exception as exc:  # shown in its column; the other columns go on
            run.error = exc
        finally:
            run.ended = time.monotonic()

    view = CompareView(runs)
    rich = rich_frontend(shell)
    handle = show(view, display_id=True) if rich else None
    threads = [threading.Thread(target=produce, args=(run,), daemon=True) for run in runs]
    for thread in threads:
        thread.start()
    try:
        while any(thread.is_alive() for thread in threads):
            time.sleep(1.0 / CompareView.RATE)  # interruptible; the view is redrawn at most this often
            if handle is not None:
                handle.update(view)
    except KeyboardInterrupt:
        for run in runs:
            if run.stream is not None:
                run.stream.close()
        for thread in threads:
            thread.join(timeout=5)
        if handle is not None:
            handle.update(view)
        raise
    if handle is not None:
        handle.update(view, metadata=metadata())
    else:
        show(view)
