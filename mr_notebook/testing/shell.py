"""A real in-process IPython shell with ``%load_ext mr_notebook`` on an in-process engine, for magic tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mr_notebook import current


@contextmanager
def magic_shell(home: Path) -> Iterator[Any]:
    """IPython's global test shell with the extension loaded on a LocalEngine over ``home``; unloaded after
    (which closes the engine and its workers)."""
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from mr_notebook.client.local import LocalEngine
    from mr_notebook.store import Store

    ip = start_ipython() or get_ipython()  # type: ignore[no-untyped-call]  # None when another test module started the global shell first
    if ip is None:
        raise RuntimeError("IPython's test shell did not start")
    ip.run_line_magic("load_ext", "mr_notebook")
    current.use(LocalEngine(Store(home)))
    try:
        yield ip
    finally:
        ip.run_line_magic("unload_ext", "mr_notebook")


def fresh(ip: Any) -> Any:
    """``ip`` with no conversation, default model, used models or last ``_chat`` left by an earlier test."""
    from mr_notebook.kernel import kernel_state

    kernel_state(ip).conversations.clear()
    current.usage.default_model = None
    current.usage.used_models.clear()
    ip.user_ns.pop("_chat", None)
    return ip


def run_cell(ip: Any, code: str, *, store_history: bool = False) -> tuple[Any, Any]:
    """Run ``code`` as a cell: (IPython's ExecutionResult, the captured stdout/stderr/displays)."""
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        result = ip.run_cell(code, store_history=store_history)
    return result, captured
