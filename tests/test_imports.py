"""Import hygiene: the core stays free of interface libraries and llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("llama_cpp", "IPython", "ipywidgets", "jupyter_server", "tornado", "anywidget")


def _loaded_after(statement: str) -> list[str]:
    code = f"{statement}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    modules = json.loads(out.stdout)
    return [m for m in modules if m.split(".")[0] in HEAVY]


def test_importing_the_package_is_light() -> None:
    assert _loaded_after("import mr_notebook") == []


def test_core_imports_no_interface_library() -> None:
    core = (
        "import mr_notebook.store, mr_notebook.store.pull, mr_notebook.engine, mr_notebook.errors, "
        "mr_notebook.settings, mr_notebook.cli, mr_notebook.client"
    )
    assert _loaded_after(core) == []
