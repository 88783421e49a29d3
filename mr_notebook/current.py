"""The engine of this process, the one ``%model``, ``%%chat``, the widgets, ``mr_notebook.map`` and
``mr_notebook.openai_client()`` use, and what this process uses it for (the default model, the models used).

A kernel has one set of loaded models and one connection to the server that holds them, so this is the
single place that knows it; the interfaces ask here instead of finding each other (the widgets used to reach
the magics through ``get_ipython()``, which made ``kernel/`` and ``widgets/`` import each other).

It is a process-wide holder, against the habit of passing state down, because what it holds *is* the process's
engine: IPython magics, widgets created from Python and ``openai_client()`` have no common caller that could
pass it. It connects lazily (see :func:`mr_notebook.client.connect`) and imports nothing heavy.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mr_notebook.client import Engine


@dataclass
class Usage:
    """What this process asked of its engine, read by every interface."""

    #: The model used when none is named (``%%chat`` without ``-m``, ``map()``, the chat widget): the last one
    #: ``%model run`` loaded.
    default_model: str | None = None
    #: Stored models this process used (name → digest), for ``%model lock``.
    used_models: dict[str, str] = field(default_factory=dict)


#: This process's :class:`Usage`.
usage = Usage()

_lock = threading.Lock()
_engine: Engine | None = None
_atexit_registered = False


def engine() -> Engine:
    """The engine of this process, connected on first use (a server's, else one in this process)."""
    global _engine
    with _lock:
        if _engine is None:
            from mr_notebook.client import connect

            _engine = connect()
            _close_at_exit()
        return _engine


def peek() -> Engine | None:
    """The engine if one is connected, without connecting (``%model status`` before any verb, tests)."""
    return _engine


def use(new: Engine | None) -> None:
    """Make ``new`` the engine of this process (a test's engine, a user's other server); closes the previous
    one. ``None`` forgets it, so the next :func:`engine` connects again."""
    global _engine
    with _lock:
        old, _engine = _engine, new
        if new is not None:
            _close_at_exit()
    if old is not None and old is not new:
        old.close()


@contextmanager
def using(engine: Engine) -> Iterator[Engine]:
    """Make ``engine`` the one of this process for a block (another server for a few cells, a test); the
    previous one comes back afterwards. Neither is closed."""
    global _engine
    with _lock:
        previous, _engine = _engine, engine
    try:
        yield engine
    finally:
        with _lock:
            _engine = previous


def close() -> None:
    """Close the engine of this process (its HTTP connections, an in-process engine's workers)."""
    use(None)


def _close_at_exit() -> None:
    # An in-process engine owns worker processes: end them with the interpreter, not when the OS notices.
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(close)
