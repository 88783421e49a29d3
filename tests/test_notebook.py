"""notebooks/quickstart.ipynb executed headless by nbclient in a real kernel, a tiny model standing in for
SmolLM2 (``MR_NOTEBOOK_DEMO_MODEL``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbclient
import nbformat
import pytest

from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"


def _outputs(cell: Any) -> str:
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
    return "".join(parts)


def test_quickstart_runs_headless(
    store_home: Path, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MR_NOTEBOOK_DEMO_MODEL", str(tiny_model_factory(pooling=None)))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert not [c.source for c in code for o in c.outputs if o.output_type == "error"]
    cells: dict[str, Any] = {}
    for cell in code:  # by first line; the first cell wins ("%model list" comes twice)
        cells.setdefault(cell.source.splitlines()[0], cell)

    assert "in-kernel engine" in _outputs(cells["%model status"])
    assert _outputs(cells["%model package --gguf {demo} {MODEL}"]).startswith("Model ai/smollm2:latest added")
    listing = cells["%model list"].outputs[0].data
    assert "ai/smollm2:latest" in listing["text/plain"] and listing["text/html"].startswith("<table")
    assert "ai/smollm2:latest" in _outputs(cells["models = %model list"])
    assert "**ai/smollm2:latest** is loaded" in _outputs(cells["%model run ai/smollm2"])
    assert _outputs(cells['%model run ai/smollm2 "Say hello in five words."']) == DEFAULT_REPLY

    chat = next(c for first, c in cells.items() if first.startswith("%%chat --system"))
    # Streamed as sanitised Markdown (HTML, never text/markdown) into one display, left as the final text.
    [reply] = [o for o in chat.outputs if o.output_type == "display_data"]
    assert reply.data["text/plain"] == DEFAULT_REPLY
    assert reply.data["text/html"] == f"<p>{DEFAULT_REPLY}</p>\n"
    assert "'completion_tokens'" in _outputs(cells["print(_chat.usage)"])
    assert _outputs(cells["print(_chat.usage)"]).endswith("5")  # system, user, assistant, user, assistant
    assert DEFAULT_REPLY in _outputs(cells["import mr_notebook"])
    assert DEFAULT_REPLY in _outputs(cells["stream = client.chat.completions.create("])
    assert (
        _outputs(
            cells['result = client.embeddings.create(model="ai/smollm2", input=["Docker volumes", "Docker networks"])']
        )
        == "[64, 64]"
    )
    assert "ai/smollm2:latest" in _outputs(cells["%model ps"])
    assert _outputs(cells["%model unload ai/smollm2"]) == "Unloaded 1 model(s).\n"
    assert "Deleted: sha256:" in _outputs(cells["%model rm ai/smollm2"])
    assert "No models stored yet" in _outputs(code[-1])
