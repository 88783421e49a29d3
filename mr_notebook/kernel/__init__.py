"""The IPython extension: ``%load_ext mr_notebook`` registers ``%model`` and ``%%chat``.

Loading only registers the magics (no engine, no HTTP client, no llama_cpp); the connection to an engine
is made by the first verb that needs it (see :mod:`mr_notebook.current`, the engine of this process).
"""

from __future__ import annotations

from typing import Any


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


def kernel_state(ipython: Any) -> Any:
    """This shell's :class:`~mr_notebook.kernel.state.KernelState`, loading the extension if needed."""
    if "ModelMagics" not in ipython.magics_manager.registry:
        load_ipython_extension(ipython)
    return ipython.magics_manager.registry["ModelMagics"].state
