"""notebooks/workflows.ipynb executed headless by nbclient in a real kernel, a tiny model standing in for
SmolLM2 (``MR_NOTEBOOK_DEMO_MODEL``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

from mr_notebook.testing import TinyModelFactory

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "workflows.ipynb"
REPLY = '{"sentiment": "positive"}'


def _text(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
    return "".join(parts)


def test_workflows_notebook_runs_headless(
    store_home: Path, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MR_NOTEBOOK_DEMO_MODEL", str(tiny_model_factory(reply=REPLY, context_length=8192)))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [(c.source, o.ename) for c in code for o in c.outputs if o.output_type == "error"]
    assert errors == [(code[6].source, "KeyError")]  # the cell that fails on purpose, for --error

    def cell(start: str) -> Any:
        return next(c for c in code if c.source.startswith(start))

    joined = _text(cell("reviews = pd.DataFrame("))
    assert "sentiment" in joined and joined.count("positive") == 4
    assert _text(cell("again = mr_notebook.map(")) == "(0, 4, [])"
    assert "[]" in _text(cell("titles = mr_notebook.map("))
    fix = cell("%%chat --error --insert --max-tokens 160 --temperature 0")
    assert REPLY in _text(fix) and "no code block" in _text(fix)
    samples = cell("%%chat -n 3 --temperature 0.9 --max-tokens 48 --no-history")
    assert _text(samples).count("sample") == 3 and "tok/s" in _text(samples)
    html = [o.data["text/html"] for o in samples.outputs if "text/html" in o.get("data", {})]
    assert html and "TTFT" in html[-1]
    tokens = cell("%%chat --logprobs --temperature 0 --max-tokens 24 --no-history")
    assert any("mr-token" in o.data.get("text/html", "") for o in tokens.outputs)
    widget = cell("w = mr_notebook.chat(MODEL, temperature=0, max_tokens=24)")
    count = int(_text(widget).split(" tokens with their alternatives")[0])
    assert count > 0 and any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in widget.outputs)
    preview = cell("%%chat --max-tokens 64 --temperature 0 --no-history")
    assert "(Prompt: " in _text(preview) and "with {sales}.)" in _text(preview)
    # Provenance is saved in the .ipynb with the reply.
    saved = [o.metadata["mr_notebook"]["provenance"] for o in preview.outputs if "mr_notebook" in o.get("metadata", {})]
    assert saved and saved[0]["model"] == "ai/smollm2:latest" and saved[0]["digest"].startswith("sha256:")
    lock = json.loads(_text(cell("print(lock_file.read_text())")))
    assert [m["name"] for m in lock["models"]] == ["ai/smollm2:latest"]
    assert lock["models"][0]["digest"] == saved[0]["digest"]
    assert "1 model(s) match" in _text(cell("%model sync {lock_file}"))
    assert "Deleted: sha256:" in _text(code[-1])
