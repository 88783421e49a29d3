"""The IPython extension: ``%load_ext mr_notebook`` registers ``%model`` and ``%%chat``.

Loading only registers the magics (no engine, no HTTP client, no llama_cpp); the connection to an engine
is made by the first verb that needs it (see :func:`mr_notebook.client.connect`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mr_notebook.client import Engine


def load_ipython_extension(ipython: Any) -> None:
    from mr_notebook.kernel.magics import ModelMagics

    if "ModelMagics" not in ipython.magics_manager.registry:
        ipython.register_magics(ModelMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    magics = ipython.magics_manager.registry.pop("ModelMagics", None)
    if magics is None:
        return
    for kind, names in (("line", ("model",)), ("cell", ("chat",))):
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    magics.state.close()


def shell_engine() -> Engine | None:
    """The engine of this process (:mod:`mr_notebook.current`) when running inside IPython, else None."""
    if "IPython" not in sys.modules:  # only look when IPython is there; importing it in a script is slow
        return None
    from IPython import get_ipython

    if get_ipython() is None:
        return None
    from mr_notebook import current

    return current.engine()


def kernel_state(ipython: Any) -> Any:
    """This shell's :class:`~mr_notebook.kernel.state.KernelState`, loading the extension if needed."""
    if "ModelMagics" not in ipython.magics_manager.registry:
        load_ipython_extension(ipython)
    return ipython.magics_manager.registry["ModelMagics"].state
