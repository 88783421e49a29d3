"""Widget models against a real in-process engine (LocalEngine, real llama.cpp workers, tiny models)."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mr_notebook.client.local import LocalEngine
from mr_notebook.conversation import TOKEN_VIEW_LIMIT, compact_logprobs
from mr_notebook.errors import InvalidRequest, ModelNotFound, WorkerCrashed
from mr_notebook.progress import Meter, Throttle, throttled
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.store.pull import PullProgress
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.markup import FORMATTED, FORMATTED_HTML, PAYLOADS, inert_text
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE, TinyModelFactory
from mr_notebook.testing.waiting import wait_for
from mr_notebook.widgets import ChatBusy, ChatWidget, ModelManager, chat, manager
from mr_notebook.widgets._common import MARKDOWN_LIBRARIES, bundle

REPLY = "One two three four five six seven eight nine ten."
#: A thinking model (Qwen 3 style template): its reasoning streams apart from the answer.
THINK_TEMPLATE = CHATML_TEMPLATE + "{% if enable_thinking is defined %}<think></think>{% endif %}"
REASONING = "The user counts. <b>Five</b> words?"
THINK_REPLY = f"<think>{REASONING}</think>One two."
WAIT = 60.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[LocalEngine]:
    home = tmp_path_factory.mktemp("widgets-home")
    engine = LocalEngine(Store(home), EngineSettings.from_env({}), env={})
    engine.package(str(tiny_model_factory(reply=REPLY)), "ai/tiny")
    engine.package(str(tiny_model_factory(never_stop=True)), "ai/forever")
    engine.package(str(tiny_model_factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE)), "ai/thinker")
    yield engine
    engine.close()


@pytest.fixture
def widget(engine: LocalEngine) -> Iterator[ChatWidget]:
    w = chat("ai/tiny", engine=engine)
    yield w
    w.close()


def assistant_snapshots(w: ChatWidget) -> list[str]:
    """Every value of the assistant's reply the front end was sent, in order."""
    seen: list[str] = []

    def record(change: dict[str, Any]) -> None:
        last = change["new"][-1] if change["new"] else {}
        if last.get("role") == "assistant":
            seen.append(last["content"])

    w.observe(record, "messages")
    return seen


def test_send_returns_the_reply_and_records_the_conversation(widget: ChatWidget) -> None:
    assert widget.models == ["ai/forever:latest", "ai/thinker:latest", "ai/tiny:latest"]
    assert widget.send("Hi", timeout=WAIT) == REPLY
    assert widget.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": REPLY}]
    assert not widget.busy and "tokens" in widget.status and "tok/s" in widget.status
    assert widget.send("And again?", timeout=WAIT) == REPLY
    assert [m["role"] for m in widget.messages] == ["user", "assistant", "user", "assistant"]


def test_tokens_stream_into_messages(widget: ChatWidget) -> None:
    widget.sync_interval = 0  # every token reaches the front end
    seen = assistant_snapshots(widget)
    widget.send("Count", timeout=WAIT)
    # Partial replies reached the front end before the whole one (the engine decides how tokens are grouped).
    assert len(seen) >= 2 and len(seen[0]) < len(REPLY) and seen[-1] == REPLY
    assert all(later.startswith(earlier) and len(later) > len(earlier) for earlier, later in itertools.pairwise(seen))


def test_sync_to_the_front_end_is_rate_limited(widget: ChatWidget) -> None:
    widget.sync_interval = 3600.0  # nothing between the first delta and the end
    seen = assistant_snapshots(widget)
    widget.send("Count", timeout=WAIT)
    assert len(seen) == 2 and seen[-1] == REPLY


def test_stop_ends_generation_in_the_engine(engine: LocalEngine) -> None:
    w = chat("ai/forever", engine=engine, max_tokens=100_000)
    future = w.submit("Go on forever")
    wait_for(lambda: len(w.messages) == 2 and w.messages[-1]["content"], "the first tokens")
    w.stop()
    text = future.result(WAIT)
    assert text and w.messages[-1] == {"role": "assistant", "content": text}
    assert "stopped" in w.status and not w.busy
    wait_for(lambda: all(entry["in_flight"] == 0 for entry in engine.ps()), "the worker to go idle")
    # The same worker serves the next request at once.
    w.max_tokens = 5
    w.send("Again", timeout=WAIT)
    assert "stopped at max tokens" in w.status and "5 tokens" in w.status
    w.close()


def test_errors_show_inline_and_the_widget_stays_usable(widget: ChatWidget) -> None:
    widget.model = "ai/missing"
    with pytest.raises(ModelNotFound):
        widget.send("Hello?", timeout=WAIT)
    error = widget.messages[-1]
    assert error["role"] == "error" and "ModelNotFound" in error["content"] and "pull" in error["content"]
    assert not widget.busy and widget.status == "Error"
    widget.model = "ai/tiny"
    assert widget.send("Hello!", timeout=WAIT) == REPLY
    # The failed turn is shown but not sent to the model again.
    assert [m["content"] for m in widget._request_messages()] == ["Hello!", REPLY]
    with pytest.raises(InvalidRequest):
        widget.send("   ")


def test_worker_crash_mid_stream_is_shown_and_recovered(engine: LocalEngine) -> None:
    w = chat("ai/forever", engine=engine, max_tokens=100_000)
    future = w.submit("Stream until killed")
    wait_for(lambda: len(w.messages) == 2 and w.messages[-1]["content"], "the first tokens")
    forever = engine.inspect("ai/forever")["id"]
    pid = next(entry["pid"] for entry in engine.ps() if entry["id"] == forever)
    with pytest.raises(ChatBusy):
        w.submit("Not now")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed):
        future.result(WAIT)
    roles = [m["role"] for m in w.messages]
    assert roles == ["user", "assistant", "error"] and "WorkerCrashed" in w.messages[-1]["content"]
    w.max_tokens = 3
    # The failed turn, partial reply included, is shown but not sent again (it may be longer than the context).
    assert w._request_messages() == []
    assert w.send("Back?", timeout=WAIT)  # a fresh worker answers
    w.close()


def test_reasoning_streams_apart_and_is_not_sent_back(engine: LocalEngine) -> None:
    w = chat("ai/thinker", engine=engine)
    w.sync_interval = 0
    seen: list[dict[str, Any]] = []
    w.observe(lambda change: seen.append(change["new"][-1]), "messages")
    assert w.send("Count", timeout=WAIT) == "One two."
    assert w.messages[-1] == {"role": "assistant", "content": "One two.", "reasoning": REASONING}
    # The reasoning reached the front end while the model was still thinking (no answer yet).
    assert any(e.get("reasoning") and not e["content"] for e in seen if e["role"] == "assistant")
    w.send("More", timeout=WAIT)
    assert w._request_messages()[:2] == [
        {"role": "user", "content": "Count"},
        {"role": "assistant", "content": "One two."},
    ]
    w.close()


def test_a_missing_model_fails_on_the_first_read(engine: LocalEngine) -> None:
    # Engine.chat_stream's contract, kept by the reasoning split (it looks the model up first).
    stream = engine.chat_stream("ai/missing", [{"role": "user", "content": "Hi"}])
    with pytest.raises(ModelNotFound):
        next(stream)


def test_token_view_toggle_attaches_the_tokens_once(widget: ChatWidget) -> None:
    widget.sync_interval = 0
    seen = []
    widget.observe(lambda change: seen.append(change["new"][-1]), "messages")
    widget.send("Plain", timeout=WAIT)
    assert "logprobs" not in widget.messages[-1]
    widget.logprobs = True  # the "Tokens" checkbox
    seen.clear()
    widget.send("With tokens", timeout=WAIT)
    tokens = widget.messages[-1]["logprobs"]
    assert "".join(t["token"] for t in tokens) == REPLY
    assert all(set(t) == {"token", "logprob", "top_logprobs"} and len(t["top_logprobs"]) == 5 for t in tokens)
    assert all(set(alt) == {"token", "logprob"} for t in tokens for alt in t["top_logprobs"])  # no byte lists
    # Streaming syncs stay small: the tokens come with the final entry only.
    replies = [e for e in seen if e["role"] == "assistant"]
    assert len(replies) >= 2 and "logprobs" in replies[-1] and not any("logprobs" in e for e in replies[:-1])
    # The conversation is one Conversation: what Python assigns is what is sent next.
    widget.messages = [{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes."}]
    assert widget.conversation.messages("Now") == [
        {"role": "user", "content": "Earlier"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Now"},
    ]


def test_token_view_keeps_a_bounded_number_of_tokens() -> None:
    alternative = {"token": "x", "logprob": -2.0, "bytes": [120]}
    entry = {"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": [alternative] * 5}
    kept = compact_logprobs([entry] * (TOKEN_VIEW_LIMIT + 50))
    assert len(kept) == TOKEN_VIEW_LIMIT  # the browser shows the rest of the reply as text
    assert kept[0] == {"token": "a", "logprob": -0.1, "top_logprobs": [{"token": "x", "logprob": -2.0}] * 5}
    assert compact_logprobs(None) == []


def test_no_model_chosen_is_an_inline_hint(tmp_path: Path) -> None:
    empty = LocalEngine(Store(tmp_path), EngineSettings.from_env({}), env={})
    w = ChatWidget(engine=empty)
    assert w.model == "" and w.models == []
    with pytest.raises(InvalidRequest):
        w.send("Anyone?", timeout=WAIT)
    assert "Choose a model" in w.messages[-1]["content"]
    w.close()
    empty.close()


def test_front_end_messages_send_clear_and_settings(widget: ChatWidget) -> None:
    widget.system = "Answer briefly."
    widget._handle_custom_msg({"type": "send", "text": "From the browser"}, [])
    assert widget.wait(WAIT) and widget.messages[-1] == {"role": "assistant", "content": REPLY}
    assert widget._request_messages()[0] == {"role": "system", "content": "Answer briefly."}
    widget._handle_custom_msg({"type": "clear"}, [])
    wait_for(lambda: widget.messages == [], "the conversation to clear")
    widget._handle_custom_msg({"type": "refresh"}, [])
    widget._handle_custom_msg({"type": "stop"}, [])  # idle: nothing to stop
    assert not widget.busy


def test_manager_lists_loads_unloads_and_removes(engine: LocalEngine, tiny_model_factory: TinyModelFactory) -> None:
    engine.unload(None)
    engine.package(str(tiny_model_factory(reply="spare")), "ai/spare:v1")
    m = manager(engine=engine, refresh_interval=0)
    row = next(r for r in m.rows if r["name"] == "ai/tiny:latest")
    assert row["quantization"] == "F16" and row["parameters"] and row["size"] and not row["loaded"]
    assert m.disk["total"] > 0 and m.loaded_memory == 0
    m.load("ai/tiny").result(WAIT)
    row = next(r for r in m.rows if r["name"] == "ai/tiny:latest")
    assert row["loaded"] and row["memory"] > 0 and m.loaded_memory >= row["memory"]
    assert m.notice == {"text": "Loaded ai/tiny.", "kind": "info"} and m.pending == {}
    m.unload("ai/tiny:latest").result(WAIT)
    assert not next(r for r in m.rows if r["name"] == "ai/tiny:latest")["loaded"] and m.loaded_memory == 0

    m.load("ai/spare:v1").result(WAIT)
    disk = m.disk["total"]
    m._handle_custom_msg({"type": "remove", "name": "ai/spare:v1"}, [])  # the confirmed click in the browser
    wait_for(lambda: all(r["name"] != "ai/spare:v1" for r in m.rows) and not m.pending, "the removal")
    assert m.disk["total"] < disk and not [e for e in engine.ps() if e["model"] == "ai/spare:v1"]

    with pytest.raises(ModelNotFound):
        m.load("ai/nothing").result(WAIT)
    assert m.notice["kind"] == "error" and "ModelNotFound" in m.notice["text"]
    m.close()


@pytest.fixture
def hub(tiny_model_factory: TinyModelFactory) -> Iterator[tuple[LocalHub, Path]]:
    gguf = tiny_model_factory(reply="pulled")
    with LocalHub() as local_hub:
        local_hub.add_repo("test/tiny-GGUF", {"tiny-GGUF-Q8_0.gguf": gguf})
        yield local_hub, gguf


def test_manager_pull_shows_progress(hub: tuple[LocalHub, Path], tmp_path: Path) -> None:
    local_hub, gguf = hub
    local_hub.rate = gguf.stat().st_size / 2  # about two seconds: several progress updates
    engine = LocalEngine(Store(tmp_path), EngineSettings.from_env({}), env={"HF_ENDPOINT": local_hub.url})
    m = ModelManager(engine=engine, refresh_interval=0)
    states: list[dict[str, Any]] = []
    m.observe(lambda change: states.append(change["new"]), "pull_state")
    summary = m.pull("hf.co/test/tiny-GGUF:Q8_0").result(WAIT)
    size = gguf.stat().st_size
    assert not summary.already_present and "hf.co/test/tiny-gguf:Q8_0" in summary.message
    downloading = [s for s in states if s.get("status") == "downloading" and s.get("total")]
    assert len(downloading) >= 2 and downloading[-1]["total"] == size
    assert [s["completed"] for s in downloading] == sorted(s["completed"] for s in downloading)
    assert downloading[-1]["completed"] == size and downloading[-1]["speed"] > 0
    final = states[-1]
    assert final["status"] == "done" and final["completed"] == size and final["speed"] > 0 and not final["active"]
    assert [r["name"] for r in m.rows] == ["hf.co/test/tiny-gguf:Q8_0"]
    m.close()
    engine.close()


def test_manager_pull_can_be_cancelled(hub: tuple[LocalHub, Path], tmp_path: Path) -> None:
    local_hub, _ = hub
    engine = LocalEngine(Store(tmp_path), EngineSettings.from_env({}), env={"HF_ENDPOINT": local_hub.url})
    m = ModelManager(engine=engine, refresh_interval=0)

    def press_cancel_once_downloading(change: dict[str, Any]) -> None:
        if change["new"].get("status") == "downloading":  # the Cancel button, as soon as it shows
            m._handle_custom_msg({"type": "cancel_pull"}, [])

    m.observe(press_cancel_once_downloading, "pull_state")
    m._handle_custom_msg({"type": "pull", "ref": "hf.co/test/tiny-GGUF:Q8_0"}, [])
    wait_for(lambda: m.pull_state.get("status") in ("cancelled", "done", "error"), "the pull to stop")
    assert m.pull_state["status"] == "cancelled" and "resume" in m.pull_state["message"]
    assert not m.pull_state["active"] and m.rows == [] and m.notice["text"] == ""
    m.unobserve(press_cancel_once_downloading, "pull_state")
    m.pull("hf.co/test/tiny-GGUF:Q8_0").result(WAIT)  # the box works again after a cancel
    assert m.pull_state["status"] == "done" and [r["name"] for r in m.rows] == ["hf.co/test/tiny-gguf:Q8_0"]
    m.close()
    engine.close()


def test_progress_meter_speed_and_eta() -> None:
    meter = Meter()
    mib = 1 << 20

    def event(done: int) -> PullProgress:
        return PullProgress("downloading", "Downloading", "sha256:x", done, 100 * mib, done, 100 * mib)

    first = meter.update(event(0), now=10.0)
    assert first["speed"] == 0 and first["eta"] is None
    assert meter.update(event(mib), now=10.05)["speed"] == 0  # a window under a quarter second: no rate yet
    state = meter.update(event(10 * mib), now=11.0)
    assert state["speed"] == 10 * mib and state["eta"] == 9.0
    state = meter.update(event(30 * mib), now=12.0)  # 20 MiB/s now, smoothed with the past
    assert 10 * mib < state["speed"] < 20 * mib
    assert state["eta"] == 70 * mib / state["speed"]


def test_progress_is_throttled_once_keeping_status_changes_and_finished_layers() -> None:
    clock = [0.0]
    seen: list[tuple[str, str | None, int]] = []
    throttle = Throttle(lambda e: seen.append((e.status, e.digest, e.completed)), clock=lambda: clock[0])
    assert throttled(throttle) is throttle and throttled(None) is None

    def event(status: str, digest: str, done: int, total: int = 100) -> PullProgress:
        return PullProgress(status, status, digest, done, total, done, total)

    throttle(event("resolving", "", 0, 0))
    for done in range(1, 100):  # 99 chunks within 0.099 s: one event gets through, the first
        clock[0] += 0.001
        throttle(event("downloading", "sha256:a", done))
    throttle(event("downloading", "sha256:a", 100))  # the layer finished: always sent
    clock[0] += 0.2
    throttle(event("downloading", "sha256:b", 5))
    throttle(event("done", "sha256:b", 100))
    assert seen == [
        ("resolving", "", 0),
        ("downloading", "sha256:a", 1),
        ("downloading", "sha256:a", 100),
        ("downloading", "sha256:b", 5),
        ("done", "sha256:b", 100),
    ]


def test_model_chat_and_ui_magics_open_the_widgets_on_the_kernel_engine(
    tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython

    from mr_notebook.kernel import kernel_state

    ip = start_ipython() or get_ipython()  # None when another test started the global shell first
    assert ip is not None
    ip.run_line_magic("load_ext", "mr_notebook")
    kernel_engine = LocalEngine(Store(tmp_path), EngineSettings.from_env({}), env={})
    kernel_engine.package(str(tiny_model_factory(reply=REPLY)), "ai/tiny")
    kernel_state(ip).use(kernel_engine)
    try:
        w = ip.run_line_magic("model", "chat tiny")
        assert isinstance(w, ChatWidget) and w.engine is kernel_engine and w.model == "ai/tiny:latest"
        m = ip.run_line_magic("model", "ui")
        assert isinstance(m, ModelManager) and m.engine is kernel_engine
        assert [row["name"] for row in m.rows] == ["ai/tiny:latest"]
        w.close()
        m.close()  # the widgets leave the kernel's engine open: the magics still use it
        assert kernel_engine.list()
    finally:
        ip.run_line_magic("unload_ext", "mr_notebook")


# ---------------------------------------------------------------------- the chat widget's Markdown, in node
def markdown_in_node(tmp_path: Path, sources: list[str]) -> dict[str, Any]:
    """markdown.js as the widget bundles it (vendored markdown-it included), run by node on ``sources``:
    {"html": [markdownToHtml(source) …], "max_chars": MD_MAX_CHARS, "globals": [typeof markdownit …]}.

    DOMPurify needs a DOM, so its half is checked in the browser (test_browser.py).
    """
    node = shutil.which("node")
    assert node, "node is needed for the widget's renderer tests (.ci/run installs nodejs)"
    module = tmp_path / "markdown.mjs"
    module.write_text(
        bundle("markdown.js", libraries=MARKDOWN_LIBRARIES) + "\nexport { markdownToHtml, MD_MAX_CHARS };\n"
    )
    runner = tmp_path / "run.mjs"
    runner.write_text(
        "import { readFileSync } from 'node:fs';\n"
        "import { markdownToHtml, MD_MAX_CHARS } from './markdown.mjs';\n"
        "const sources = JSON.parse(readFileSync(0, 'utf8'));\n"
        "const globals = [typeof globalThis.markdownit, typeof globalThis.DOMPurify];\n"
        "const html = sources.map((source) => markdownToHtml(source));\n"
        "process.stdout.write(JSON.stringify({ html, globals, max_chars: MD_MAX_CHARS }));\n"
    )
    done = subprocess.run(
        [node, str(runner)], input=json.dumps(sources), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_widget_markdown_shows_hostile_replies_as_text(tmp_path: Path) -> None:
    result = markdown_in_node(tmp_path, PAYLOADS)
    assert result["globals"] == ["undefined", "undefined"]  # the vendored libraries stay inside the module
    for source, html in zip(PAYLOADS, result["html"], strict=True):
        text = inert_text(html)  # raises LiveMarkup on anything that could run or load
        assert ("onerror" in text) == ("onerror" in source), (source, html)


def test_widget_markdown_keeps_formatting(tmp_path: Path) -> None:
    [html] = markdown_in_node(tmp_path, [FORMATTED])["html"]
    inert_text(html)
    for fragment in FORMATTED_HTML:
        assert fragment in html, (fragment, html)


def test_widget_markdown_work_is_bounded(tmp_path: Path) -> None:
    """The old renderer overflowed the stack on 20,000 nested quotes and was quadratic on unclosed ``**``."""
    deep_list = "\n".join("  " * depth + "- item" for depth in range(200))
    sources = [">" * 20_000 + " hi", deep_list, "**a " * 20_000, "x" * 100_000 + " TAIL"]
    result = markdown_in_node(tmp_path, sources)
    quotes, nested, stars, long = result["html"]
    # Deeper than markdown-it's nesting cap: null, and the widget shows the whole text as plain text.
    assert quotes is None and nested is None
    assert inert_text(stars).count("**a") == 20_000
    # Only the first MD_MAX_CHARS characters are parsed; renderMarkdown appends the rest as plain text.
    assert result["max_chars"] == 100_000 and "x" * 1000 in long and "TAIL" not in long
