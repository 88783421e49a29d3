"""``%model`` and ``%%chat`` in a real in-process IPython shell, on an in-kernel engine with tiny models."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from IPython.utils.capture import CapturedIO, capture_output

from mr_notebook.errors import EngineUnavailable, ModelNotFound
from mr_notebook.kernel import kernel_state
from mr_notebook.kernel.chat import ChatReply, GenerationStopped
from mr_notebook.store import Store
from mr_notebook.tables import Record, Table
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.shell import fresh, magic_shell, run_cell

LOOP = "one two three "


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("magics") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True, context_length=8192), "ai/loop")
    store.import_gguf(tiny_model_factory(reply='{"a": 1, "b": [true, null]}'), "ai/json")
    return home


@pytest.fixture(scope="module")
def shell(home: Path) -> Iterator[InteractiveShell]:
    """One shell for the module, its extension loaded on an in-kernel engine over ``home``."""
    with magic_shell(home) as ip:
        yield ip


@pytest.fixture
def ip(shell: InteractiveShell) -> InteractiveShell:
    return fresh(shell)


def run(ip: InteractiveShell, code: str) -> tuple[ExecutionResult, CapturedIO]:
    return run_cell(ip, code)


def test_load_ext_imports_no_engine_and_registers_the_magics() -> None:
    code = textwrap.dedent("""
        import sys
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "mr_notebook")
        heavy = [m for m in ("llama_cpp", "mr_notebook.engine", "mr_notebook.client.remote", "httpx",
                             "mr_notebook.api", "tornado.web", "openai") if m in sys.modules]
        print(sorted(ip.magics_manager.magics["line"]).count("model"),
              sorted(ip.magics_manager.magics["cell"]).count("chat"), heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "1 1 []"


def test_help_for_the_magic_and_each_verb(ip: InteractiveShell) -> None:
    result, out = run(ip, "%model --help")
    assert result.success and "pull REF" in out.stdout and "configure REF" in out.stdout
    result, out = run(ip, "%model run --help")
    assert result.success and "--keep-alive" in out.stdout and "usage: %model run" in out.stdout
    result, out = run(ip, "%%chat --help\nignored")
    assert result.success and "--no-history" in out.stdout and "{name}" in out.stdout
    result, out = run(ip, "%model")
    assert result.success and "Verbs:" in out.stdout


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%model list --bogus", "%model list: unrecognized arguments: --bogus"),
        ("%model frobnicate", "invalid choice: 'frobnicate'"),
        ('%model run "ai/tiny', "check the quotes"),
        ("%model rm", "the following arguments are required: REF"),
        ("%model configure ai/tiny --context-size many", "invalid int value: 'many'"),
        ("%model configure ai/tiny --keep-alive soon", "Invalid keep_alive 'soon'"),
        ("%model unload", "--all"),
        ("%%chat --temperature hot\nhi", "invalid float value: 'hot'"),
        ("%%chat --json --schema x\nhi", "not allowed with argument"),
    ],
)
def test_bad_arguments_give_a_short_usage_error(ip: InteractiveShell, line: str, message: str) -> None:
    result, out = run(ip, line)
    assert isinstance(result.error_in_exec, UsageError)
    assert message in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr and "SystemExit" not in out.stdout + out.stderr


def test_user_errors_are_one_red_line_and_keep_their_type(ip: InteractiveShell) -> None:
    result, out = run(ip, "%model inspect ai/missing")
    assert isinstance(result.error_in_exec, ModelNotFound)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("\x1b[31mModelNotFound: Model 'ai/missing:latest'")
    assert "%model pull ai/missing:latest" in lines[0]
    result, out = run(ip, "%%chat -m ai/missing\nhello")
    assert isinstance(result.error_in_exec, ModelNotFound) and "Traceback" not in out.stdout


def test_tables_are_data_and_show_once(ip: InteractiveShell, tiny_model_factory: TinyModelFactory) -> None:
    path = tiny_model_factory(reply="Packaged.", seed=5)
    result, out = run(ip, f"%model package --gguf {path} ai/packaged:v1")
    assert result.success and out.stdout.startswith("Model ai/packaged:v1 added (")
    assert "K parameters, F16, " in out.stdout

    result, out = run(ip, "models = %model list")
    assert result.success and out.stdout == "" and not out.outputs
    models = ip.user_ns["models"]
    assert isinstance(models, Table) and isinstance(models, list)
    assert {tuple(m["tags"]) for m in models} >= {("ai/packaged:v1",), ("ai/tiny:latest",)}
    assert all(set(m) >= {"id", "tags", "created", "config"} for m in models)
    html = models._repr_html_()
    assert html.startswith("<table") and "<td style='text-align:left'>ai/packaged:v1</td>" in html

    result, out = run(ip, "%model ls")
    header = out.stdout.splitlines()[1]
    assert header.split() == [
        "MODEL",
        "NAME",
        "PARAMETERS",
        "QUANTIZATION",
        "ARCHITECTURE",
        "MODEL",
        "ID",
        "CREATED",
        "CONTEXT",
        "SIZE",
    ]
    row = next(line for line in out.stdout.splitlines() if line.startswith("ai/packaged:v1"))
    assert row.split()[2:4] == ["F16", "llama"]
    assert row.index(row.split()[1]) == header.index("PARAMETERS")  # aligned columns

    result, out = run(ip, "info = %model inspect ai/packaged:v1")
    info = ip.user_ns["info"]
    assert isinstance(info, Record) and info["tags"] == ["ai/packaged:v1"] and "Quantization   F16" in repr(info)
    result, out = run(ip, "%model tag ai/packaged:v1 other")
    assert "Model ai/packaged:v1 tagged as other." in out.stdout
    result, out = run(ip, "%model rm ai/packaged:v1 other")
    assert out.stdout.splitlines()[:2] == ["Untagged: ai/packaged:v1", "Untagged: ai/other:latest"]
    assert out.stdout.splitlines()[2].startswith("Deleted: sha256:")
    result, out = run(ip, "usage = %model df")
    assert ip.user_ns["usage"]["models"] == 3 and "Model files" in repr(ip.user_ns["usage"])
    result, out = run(ip, "%model prune")
    assert result.success and out.stdout.startswith("Removed 0 unused file(s)")
    result, out = run(ip, "%model purge")
    assert "This would delete all 3 stored model(s)" in out.stdout and "%model purge -f" in out.stdout


def test_pull_shows_progress_and_the_stored_name(
    ip: InteractiveShell, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalHub() as hub:
        hub.add_repo("test/pulled-GGUF", {"pulled-Q8_0.gguf": tiny_model_factory(reply="Pulled!", seed=3)})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result, out = run(ip, "%model pull hf.co/test/pulled-GGUF:Q8_0")
        assert result.success, out.stdout
        assert "Pulled hf.co/test/pulled-gguf:Q8_0" in out.stdout
        assert "hf.co/test/pulled-GGUF:Q8_0" in out.stderr and "100%" in out.stderr  # the tqdm bar
        result, out = run(ip, "%model pull hf.co/test/pulled-GGUF:Q8_0")
        assert "is up to date" in out.stdout
    run(ip, "%model rm hf.co/test/pulled-gguf:Q8_0")


def test_run_loads_and_shows_how_to_reach_the_model(ip: InteractiveShell) -> None:
    result, out = run(ip, "%model run ai/tiny")
    assert result.success and len(out.outputs) == 1
    text = out.outputs[0].data["text/plain"]  # a terminal shell asks for text only (kernels: Markdown too)
    assert "**ai/tiny:latest** is loaded" in text
    assert 'model="ai/tiny:latest"' in text and "openai_client()" in text
    assert kernel_state(ip).default_model == "ai/tiny:latest"
    result, out = run(ip, "%model ps")
    header, row = out.stdout.splitlines()[1:3]
    assert header.split()[:3] == ["MODEL", "NAME", "PID"] and row.split()[0] == "ai/tiny:latest"
    assert row.split()[2] == "llama.cpp" and row.split()[-3] == "in"  # the CLI's columns (one renderer)
    result, out = run(ip, "%model run ai/tiny 'Say hello'")
    assert out.stdout == DEFAULT_REPLY + "\n"
    result, out = run(ip, "%model stop ai/tiny:latest")
    assert out.stdout == "Unloaded 1 model(s).\n"


def test_chat_keeps_history_per_model(ip: InteractiveShell) -> None:
    result, out = run(ip, "%%chat\nhello")
    assert isinstance(result.error_in_exec, UsageError) and "%model run MODEL" in out.stderr
    run(ip, "%model run ai/tiny")
    result, out = run(ip, "%%chat --system 'Be brief.' --temperature 0 --seed 1\nFirst question")
    assert result.success and out.stdout == DEFAULT_REPLY + "\n"
    reply = ip.user_ns["_chat"]
    assert isinstance(reply, ChatReply) and reply == DEFAULT_REPLY
    assert reply.usage is not None and reply.usage["completion_tokens"] > 0 and reply.finish_reason == "stop"
    run(ip, "%%chat -o second\nSecond question")
    sent = ip.user_ns["second"].messages
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant"]
    assert sent[0]["content"] == "Be brief." and sent[3]["content"] == "Second question"
    run(ip, "%%chat --no-history\nAlone")
    assert [m["content"] for m in ip.user_ns["_chat"].messages] == ["Be brief.", "Alone", DEFAULT_REPLY]
    run(ip, "%%chat -m ai/json\nOther model")
    assert len(ip.user_ns["_chat"].messages) == 2  # another model, another conversation
    run(ip, "%%chat\nThird")
    assert len(ip.user_ns["_chat"].messages) == 7  # --no-history turns are not recorded
    run(ip, "%%chat --new\nFresh start")
    assert [m["content"] for m in ip.user_ns["_chat"].messages] == ["Fresh start", DEFAULT_REPLY]


class Point:
    def __init__(self) -> None:
        self.x = 3
        self.tags = ["a", "b"]


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        ("Hi {name}!", "Hi Ada!"),
        ("{point.x} {point.tags[1]} {rows[0]} {rows[-1]} {cfg['k']} {cfg[\"k\"]}", "3 b 10 30 v v"),
        ('Fix this JSON: {"name": {"first": "x"}}', 'Fix this JSON: {"name": {"first": "x"}}'),
        ("def f(d): return {k: v for k, v in d.items()}", "def f(d): return {k: v for k, v in d.items()}"),
        ("Literal {{name}}, jinja {{ name }}, unknown {nobody}", "Literal {name}, jinja {{ name }}, unknown {nobody}"),
        ("{name + 1} {point.missing} {rows[9]} {}", "{name + 1} {point.missing} {rows[9]} {}"),
        ("{name}{name}", "AdaAda"),
    ],
)
def test_chat_substitutes_names_and_keeps_other_braces(ip: InteractiveShell, body: str, sent: str) -> None:
    ip.user_ns.update(name="Ada", point=Point(), rows=[10, 20, 30], cfg={"k": "v"})
    result, _ = run(ip, f"%%chat -m ai/tiny --no-history\n{body}")
    assert result.success
    assert ip.user_ns["_chat"].messages[0]["content"] == sent


def test_chat_json_and_schema_parse_the_reply(ip: InteractiveShell) -> None:
    result, out = run(ip, "%%chat -m ai/json --json -o data\nGive me JSON")
    assert result.success, out.stdout
    assert ip.user_ns["data"] == {"a": 1, "b": [True, None]}
    assert ip.user_ns["_chat"].data == ip.user_ns["data"]
    ip.user_ns["schema"] = {"type": "object", "properties": {"a": {"type": "integer"}}}
    result, out = run(ip, "%%chat -m ai/json --schema schema -o typed\nGive me JSON")
    # The engine constrains the reply to the schema (the tiny model's own "b" does not fit it).
    assert result.success and isinstance(ip.user_ns["typed"]["a"], int)
    sent = ip.user_ns["_chat"]
    assert sent.data == ip.user_ns["typed"] and isinstance(sent, str)
    result, out = run(ip, '%%chat -m ai/json --schema \'{"type": "object"}\'\nGive me JSON')
    assert result.success and isinstance(ip.user_ns["_chat"].data, dict)
    result, out = run(ip, "%%chat -m ai/json --schema nope\nx")
    assert isinstance(result.error_in_exec, UsageError)


def _interrupt_main_thread_after(first_output: threading.Event) -> threading.Thread:
    """Raise KeyboardInterrupt in the main thread, as a kernel interrupt does, once tokens flow."""
    main = threading.main_thread().ident

    def fire() -> None:
        first_output.wait(30)
        time.sleep(0.3)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main), ctypes.py_object(KeyboardInterrupt))

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


class _Watch:
    """A stdout that notices the first streamed token."""

    def __init__(self, target: Any, seen: threading.Event) -> None:
        self.target, self.seen = target, seen

    def write(self, text: str) -> int:
        if text:
            self.seen.set()
        return int(self.target.write(text))

    def flush(self) -> None:
        self.target.flush()


def test_interrupt_stops_the_generation(ip: InteractiveShell) -> None:
    engine = kernel_state(ip).engine
    seen = threading.Event()
    with capture_output() as out:
        real = sys.stdout
        sys.stdout = _Watch(real, seen)  # type: ignore[assignment]
        try:
            thread = _interrupt_main_thread_after(seen)
            result = ip.run_cell("%%chat -m ai/loop\nCount forever", store_history=False)
        finally:
            sys.stdout = real
    thread.join(5)
    assert isinstance(result.error_in_exec, GenerationStopped)
    assert "generation stopped" in out.stdout and out.stdout.count("one") >= 1
    deadline = time.monotonic() + 10
    while any(e["in_flight"] or e["queued"] for e in engine.ps()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(e["in_flight"], e["queued"]) for e in engine.ps() if e["model"] == "ai/loop:latest"] == [(0, 0)]
    assert "_chat" not in ip.user_ns and not kernel_state(ip).conversation("ai/loop").entries
    result, out = run(ip, "%%chat -m ai/loop --max-tokens 3\nAgain")
    assert result.success and out.stdout.startswith("one two")
    engine.unload(None)


def test_openai_helpers_start_the_in_kernel_endpoint(ip: InteractiveShell) -> None:
    result, out = run(ip, "%model status")
    assert "in-kernel engine" in out.stdout and "not served" in out.stdout
    code = textwrap.dedent("""
        import mr_notebook
        client = mr_notebook.openai_client()
        answer = client.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}])
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="ai/tiny", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices]
        base_url, key = mr_notebook.endpoint()
    """)
    result, out = run(ip, code)
    assert result.success, out.stdout
    assert ip.user_ns["answer"].choices[0].message.content == DEFAULT_REPLY
    assert "".join(ip.user_ns["pieces"]) == DEFAULT_REPLY
    assert ip.user_ns["key"] == "not-needed" and str(ip.user_ns["client"].base_url) == ip.user_ns["base_url"] + "/"
    result, out = run(ip, "%model status")
    assert ip.user_ns["base_url"] in out.stdout
    result, out = run(ip, "%model serve")
    assert out.stdout.startswith(f"Serving the in-kernel engine at {ip.user_ns['base_url']}")
    kernel_state(ip).engine.unload(None)


def test_remote_kernels_never_import_llama_cpp(home: Path) -> None:
    """Pointing a shell at a server (MR_NOTEBOOK_URL) makes it an HTTP client only."""
    from test_client import start_server, stop_server

    process, info = start_server(home)
    try:
        code = textwrap.dedent("""
            import sys
            from IPython.core.interactiveshell import InteractiveShell
            ip = InteractiveShell.instance()
            ip.run_line_magic("load_ext", "mr_notebook")
            ip.run_cell("%model run ai/tiny")
            ip.run_cell("%%chat\\nhello")
            print("REPLY", ip.user_ns["_chat"])
            print("MODULES", [m for m in ("llama_cpp", "mr_notebook.engine") if m in sys.modules])
        """)
        env = {**os.environ, "MR_NOTEBOOK_URL": info["url"], "MR_NOTEBOOK_HOME": str(home)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert f"REPLY {DEFAULT_REPLY}" in out.stdout, out.stdout + out.stderr
        assert "MODULES []" in out.stdout
    finally:
        stop_server(process)


def test_store_changing_verbs_refuse_a_server_on_another_machine(ip: InteractiveShell, tmp_path: Path) -> None:
    """`%model import` adopts files into the engine's store itself: with a server whose store this machine does
    not have, it says where to run it instead of creating a stray store at the server's path."""
    from mr_notebook import current
    from mr_notebook.client.local import LocalEngine
    from mr_notebook.client.remote import RemoteEngine

    served = LocalEngine(Store(tmp_path / "server-home"))
    remote = RemoteEngine(served.serve())
    try:
        elsewhere = remote.status()["store"]
        assert not Path(elsewhere).exists()  # nothing stored yet: as far as this machine sees, it is elsewhere
        with current.using(remote):  # the shell's engine for these cells
            for line in ("import --from /nowhere", "engine rm box"):
                with pytest.raises(EngineUnavailable, match="on another machine"):
                    ip.run_line_magic("model", line)
        assert not Path(elsewhere).exists()
    finally:
        remote.close()
        served.close()
