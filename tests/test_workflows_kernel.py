"""The workflows in a real ipykernel (jupyter_client), in-kernel engine: map over pandas data, Stop during map
(keeps what is done, rerun sends only the rest), --error + --insert (set_next_input payload), side-by-side
replies, the token view's escaping, provenance in the output metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager
from test_kernel import _clean_env, _collect, execute, text_of

from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE

CODE_REPLY = "Use a non-zero divisor:\n```python\nratio = 1 / 4\n```"
HOSTILE = "<b onmouseover=alert(1)>bold</b> \"q\" 'a'"
THINK_TEMPLATE = CHATML_TEMPLATE + "{% if enable_thinking is defined %}<think></think>{% endif %}"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("workflow-kernel") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(context_length=8192), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply='{"label": "ok"}'), "ai/label")
    store.import_gguf(tiny_model_factory(reply="one two three ", never_stop=True, context_length=8192), "ai/loop")
    store.import_gguf(tiny_model_factory(reply=CODE_REPLY, context_length=8192), "ai/code")
    store.import_gguf(tiny_model_factory(reply=HOSTILE), "ai/hostile")
    thinker = tiny_model_factory(reply=f"<think>Weigh it. {HOSTILE}</think>It is *fine*.", chat_template=THINK_TEMPLATE)
    store.import_gguf(thinker, "ai/thinker")
    return home


@pytest.fixture(scope="module")
def kernel(
    home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    env = _clean_env(home)
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path_factory.mktemp("cwd")))
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    reply, _ = execute(kc, "%load_ext mr_notebook\nimport mr_notebook, pandas as pd")
    assert reply["status"] == "ok"
    yield km, kc
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def ok(kc: BlockingKernelClient, code: str) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    reply, messages = execute(kc, code)
    shown = text_of(messages)
    assert reply["status"] == "ok", shown[-2000:]
    return reply, messages, shown


def test_map_over_series_and_dataframe_in_a_kernel(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    _, _, shown = ok(
        kc,
        "s = pd.Series(['x', 'y'], index=['a', 'b'])\n"
        "out = mr_notebook.map('Say {}', s, model='ai/tiny', progress=False)\n"
        f"print('SERIES', list(out.index), set(out) == {{{DEFAULT_REPLY!r}}}, out.attrs['provenance']['model'])\n"
        "df = pd.DataFrame({'text': ['p', 'q']})\n"
        "fields = mr_notebook.map('Label {text}', df, model='ai/label', progress=False,\n"
        "    schema={'type': 'object', 'properties': {'label': {'type': 'string'}}, 'required': ['label']})\n"
        "print('FRAME', df.join(fields).to_dict('records'))",
    )
    assert "SERIES ['a', 'b'] True ai/tiny" in shown
    assert "FRAME [{'text': 'p', 'label': 'ok'}, {'text': 'q', 'label': 'ok'}]" in shown


def test_stop_during_map_keeps_what_is_done(kernel: tuple[KernelManager, BlockingKernelClient], home: Path) -> None:
    km, kc = kernel
    cache = home.parent / "stop-cache"
    code = (
        "items = [f'item {i}' for i in range(12)]\n"
        f"result = mr_notebook.map('{{}}', items, model='ai/loop', max_tokens=60, concurrency=2, "
        f"cache={str(cache)!r}, progress=False)"
    )
    msg_id = kc.execute(code)
    deadline = time.monotonic() + 60
    while not (cache.exists() and any(cache.rglob("*.json"))):  # some replies are done (and cached)
        assert time.monotonic() < deadline, "no reply finished"
        time.sleep(0.05)
    km.interrupt_kernel()
    reply, messages = _collect(kc, msg_id, 60)
    shown = text_of(messages)
    assert reply["status"] == "error" and reply["ename"] == "MapInterrupted", shown[-1000:]
    assert "Traceback" not in shown and "map stopped:" in shown
    _, _, shown = ok(
        kc,
        "import sys\npartial = sys.last_value.result\n"
        "done = sum(r is not None for r in partial)\nprint('DONE', done, len(partial))\n"
        "again = mr_notebook.map('{}', items, model='ai/loop', max_tokens=60, concurrency=2, "
        f"cache={str(cache)!r}, progress=False)\n"
        "print('RERUN', again.stats['sent'], again.stats['cached'], sum(r is not None for r in again))",
    )
    done, total = (int(x) for x in shown.split("DONE ")[1].split()[:2])
    assert 0 < done < total == 12
    sent, cached, complete = (int(x) for x in shown.split("RERUN ")[1].split()[:3])
    assert cached >= done and sent == 12 - cached and complete == 12


def test_error_and_insert_in_a_kernel(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    reply, _ = execute(kc, "parts = 0\nshare = 1 / parts")
    assert reply["status"] == "error" and reply["ename"] == "ZeroDivisionError"
    reply, _, _ = ok(kc, "%%chat -m ai/code --error --insert\nWhat now?")
    payloads = [p for p in reply.get("payload", []) if p.get("source") == "set_next_input"]
    assert payloads == [{"source": "set_next_input", "text": "ratio = 1 / 4", "replace": False}]
    _, _, shown = ok(kc, "print(repr(_chat.messages[-2]['content']))")
    assert "ZeroDivisionError: division by zero" in shown and "share = 1 / parts" in shown and "What now?" in shown


def test_compare_logprobs_and_provenance_metadata(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    _, messages, _ = ok(kc, "%%chat --models ai/tiny,ai/hostile\nHi")
    displays = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    final = displays[-1]["content"]
    html = final["data"]["text/html"]
    assert "ai/tiny" in html and "ai/hostile" in html and "TTFT" in html
    assert "<b " not in html and "&lt;b onmouseover=alert(1)&gt;" in html
    provenance = final["metadata"]["mr_notebook"]["provenance"]
    assert [p["model"] for p in provenance] == ["ai/tiny", "ai/hostile"] and provenance[0]["ttft"] > 0
    _, _, shown = ok(kc, f"print(type(_chat).__name__, len(_chat), _chat[1] == {HOSTILE!r})")
    assert "list 2 True" in shown

    _, messages, _ = ok(kc, "%%chat -m ai/hostile --logprobs\nHi")
    shown_html = "".join(m["content"]["data"].get("text/html", "") for m in messages if m["msg_type"] == "display_data")
    assert "mr-token" in shown_html and "<b " not in shown_html and "&lt;b" in shown_html
    assert "&quot;q&quot;" in shown_html and "&#x27;a&#x27;" in shown_html
    outputs = [m["content"] for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    # The streamed reply's final state carries the provenance (saved in the .ipynb with it).
    final_reply = [o for o in outputs if "mr_notebook" in o.get("metadata", {})]
    assert len(final_reply) == 1 and "mr-token" not in final_reply[0]["data"].get("text/html", "")
    meta = final_reply[0]["metadata"]["mr_notebook"]["provenance"]
    assert meta["model"] == "ai/hostile" and meta["digest"].startswith("sha256:")
    assert meta["params"] == {"logprobs": True, "top_logprobs": 5}


def test_reasoning_collapsed_above_the_streamed_answer(kernel: tuple[KernelManager, BlockingKernelClient]) -> None:
    _, kc = kernel
    _, messages, _ = ok(kc, "%%chat -m ai/thinker\nIs it fine?")
    outputs = [m["content"] for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    final = [o for o in outputs if "mr_notebook" in o.get("metadata", {})][-1]["data"]
    html = final["text/html"]
    assert html.startswith("<details class='mr-notebook-reasoning'") and "<details open" not in html
    assert html.index("Weigh it.") < html.index("</details>") < html.index("<em>fine</em>")
    assert "<b " not in html and "&lt;b onmouseover=alert(1)&gt;" in html
    assert final["text/plain"] == "It is *fine*."
    _, _, shown = ok(kc, "print(repr(_chat), repr(_chat.reasoning))")
    assert "'It is *fine*.'" in shown and "Weigh it." in shown
