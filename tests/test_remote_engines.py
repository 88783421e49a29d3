"""Remote engines (issue 15): models of other servers served through ours as NAME/<model id>.

The remotes are real servers this project did not write, started here on free 127.0.0.1 ports:
llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) with tiny models, and a second
``mr-notebook serve``. Model discovery is also checked against recorded ``/v1/models`` and ``/api/tags``
answers of vLLM and Ollama (tests/remote_answers/), served by a small loopback server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx
import openai
import pytest
from test_api_support import ServerProcess
from test_protocol_support import HERMES_REPLY, HERMES_TEMPLATE, THINK_REPLY, THINK_TEMPLATE, WEATHER_TOOL

from mr_notebook.cli import main
from mr_notebook.client.remote import RemoteEngine
from mr_notebook.engine.remote import EngineSpec, RemoteEngines, add_spec
from mr_notebook.engine.remote.config import config_path
from mr_notebook.errors import InvalidRequest, RemoteEngineError
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.registry import free_port
from mr_notebook.testing.servers import LoopbackServer
from mr_notebook.widgets import chat

HI = [{"role": "user", "content": "hi"}]
ANSWERS = Path(__file__).parent / "remote_answers"
KEY = "box-secret-0123456789"


class LlamaCppServer:
    """``python -m llama_cpp.server`` (llama-cpp-python's OpenAI server) on a fixed free port."""

    def __init__(self, model: Path, log: Path, *, api_key: str | None = None) -> None:
        self.model, self.log_path, self.api_key = model, log, api_key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LlamaCppServer:
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--model_alias", "tiny"]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "512", "--verbose", "false"]
        if self.api_key:
            args += ["--api_key", self.api_key]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("llama_cpp.server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[LlamaCppServer]:
    """A llama_cpp.server that wants an API key (ours reads it from $BOX_KEY, named in the engine spec)."""
    server = LlamaCppServer(tiny_model_factory(), tmp_path_factory.mktemp("box") / "log", api_key=KEY).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory, box: LlamaCppServer) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("ours")
    # llama_cpp.server runs one request at a time and cuts the running one short when another arrives.
    add = ["engine", "add", "box", box.url, "--api-key-env", "BOX_KEY", "--max-concurrency", "1"]
    assert main(["--home", str(home), *add]) == 0
    server = ServerProcess(home, env={"BOX_KEY": KEY})
    yield server
    server.stop()


def sdk(server: ServerProcess, root: str = "v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + root, api_key="unused", max_retries=0, timeout=60)


def test_key_is_stored_by_name_only(ours: ServerProcess) -> None:
    text = config_path(ours.home).read_text()
    assert "BOX_KEY" in text and KEY not in text
    assert json.loads(text)["engines"][0]["api_key_env"] == "BOX_KEY"


def test_chat_and_stream_through_our_endpoint(ours: ServerProcess) -> None:
    client = sdk(ours)
    reply = client.chat.completions.create(model="box/tiny", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == DEFAULT_REPLY
    assert reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="box/tiny", messages=HI, stream=True)  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == DEFAULT_REPLY
    assert len([p for p in pieces if p]) > 1  # passed through piece by piece, not as one block
    text = client.completions.create(model="box/tiny", prompt="hi", max_tokens=32)
    assert text.choices[0].text == DEFAULT_REPLY
    # The other protocols reach the remote model through the same Runner calls.
    answer = httpx.post(ours.url + "api/chat", json={"model": "box/tiny", "messages": HI, "stream": False}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"]["content"] == DEFAULT_REPLY
    # Ollama's load (empty prompt) and unload (keep_alive 0) are the remote engine's business: done, no 404.
    for keep_alive, reason in ((None, "load"), (0, "unload")):
        body = {"model": "box/tiny", "prompt": "", "stream": False, "keep_alive": keep_alive}
        done = httpx.post(ours.url + "api/generate", json={k: v for k, v in body.items() if v is not None}, timeout=60)
        assert done.status_code == 200 and done.json()["done_reason"] == reason, done.text
    claude = anthropic.Anthropic(base_url=ours.url.rstrip("/"), api_key="unused", max_retries=0)
    message = claude.messages.create(model="box/tiny", max_tokens=64, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].text == DEFAULT_REPLY  # type: ignore[union-attr]


def test_chat_widget_talks_to_the_remote_model_through_our_endpoint(ours: ServerProcess) -> None:
    # The widget's engine is our server (as in a kernel under Jupyter); the remote's key never reaches it.
    engine = RemoteEngine(ours.url, timeout=60)
    widget = chat("box/tiny", engine=engine)
    try:
        assert widget.send("hi", timeout=60) == DEFAULT_REPLY
        assert [m["role"] for m in widget.messages] == ["user", "assistant"]
        assert widget.messages[-1]["content"] == DEFAULT_REPLY
    finally:
        widget.close()
        engine.close()


def test_listing_status_and_direct_engine_root(ours: ServerProcess) -> None:
    listed = {m.id: m.owned_by for m in sdk(ours).models.list()}
    assert listed.get("box/tiny") == "box"
    assert sdk(ours).models.retrieve("box/tiny").owned_by == "box"
    tags = httpx.get(ours.url + "api/tags", timeout=30).json()["models"]  # Ollama's listing
    assert any(m["name"] == "box/tiny" and m["details"]["family"] == "box" for m in tags)
    shown = httpx.post(ours.url + "api/show", json={"model": "box/tiny"}, timeout=30)
    assert shown.status_code == 200 and "remote engine box" in shown.json()["modelfile"]
    inspected = httpx.get(ours.url + "models/box/tiny", timeout=30).json()
    assert inspected["id"] == "remote:box/tiny" and inspected["config"]["engine"] == "box"
    stored = httpx.get(ours.url + "models", timeout=30).json()
    assert any(m["tags"] == ["box/tiny"] and m["config"]["engine"] == "box" for m in stored)
    # /engines/box/v1 is that engine's own API: its own ids, no prefix needed.
    direct = sdk(ours, "engines/box/v1")
    assert [m.id for m in direct.models.list()] == ["tiny"]
    reply = direct.chat.completions.create(model="tiny", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == DEFAULT_REPLY
    status = httpx.get(ours.url + "engines/status", timeout=30).json()
    (engine,) = status["engines"]
    assert engine["name"] == "box" and engine["healthy"] is True and engine["latency"] > 0
    assert engine["requests"] >= 2 and engine["in_flight"] == 0
    (row,) = [row for row in ours.ps() if row["backend_name"] == "remote"]
    assert row["model"] == "box" and row["engine"]["healthy"] is True
    metrics = httpx.get(ours.url + "metrics", timeout=30).text
    assert 'mr_notebook_engine_up{engine="box"} 1.0' in metrics
    assert 'mr_notebook_engine_latency_seconds{engine="box"}' in metrics


def test_store_verbs_say_the_model_is_remote(ours: ServerProcess) -> None:
    answer = httpx.post(ours.url + "engines/_configure", json={"model": "box/tiny", "context_size": 256}, timeout=30)
    assert answer.status_code == 400 and "remote engine box" in answer.json()["error"]["message"]
    answer = httpx.delete(ours.url + "models/box/tiny", timeout=30)
    assert answer.status_code == 400 and "remote engine box" in answer.json()["error"]["message"]
    with pytest.raises(InvalidRequest, match="remote engine box"):
        RemoteEngines(ours.home).refuse(["box/tiny"], "rm")
    assert main(["--home", str(ours.home), "rm", "box/tiny"]) == 1


def test_killed_remote_gives_a_clear_error_then_works_again(
    ours: ServerProcess, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    flaky = LlamaCppServer(tiny_model_factory(never_stop=True, reply="la "), tmp_path / "flaky.log").start()
    try:
        # Added while our server runs: it re-reads the engines file when it changes.
        assert main(["--home", str(ours.home), "engine", "add", "flaky", flaky.url]) == 0
        client = sdk(ours)
        stream = client.chat.completions.create(
            model="flaky/tiny",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            max_tokens=400,
        )
        received = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
                if len(received) == 3:
                    flaky.kill()
        assert len(received) >= 3
        assert "flaky" in str(caught.value.message) and "mid-answer" in str(caught.value.message)
        # While it is down: an OpenAI-shaped 502 naming the engine, after the bounded connect retries.
        down = httpx.post(ours.url + "v1/chat/completions", json={"model": "flaky/tiny", "messages": HI}, timeout=60)
        assert down.status_code == 502
        error = down.json()["error"]
        assert error["code"] == "remote_engine_error" and "Engine flaky" in error["message"]
        flaky.start()  # back on the same port
        reply = client.chat.completions.create(model="flaky/tiny", messages=HI, max_tokens=4)  # type: ignore[arg-type]
        assert reply.choices[0].message.content and reply.choices[0].message.content.startswith("la")
        # A client that goes away mid-stream: the upstream request is closed and its slot freed.
        stream = client.chat.completions.create(
            model="flaky/tiny",
            messages=HI,  # type: ignore[arg-type]
            stream=True,
            max_tokens=400,
        )
        next(iter(stream))
        stream.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            engines = httpx.get(ours.url + "engines/status", timeout=10).json()["engines"]
            if next(e for e in engines if e["name"] == "flaky")["in_flight"] == 0:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the upstream request stayed open after the client left")
    finally:
        flaky.kill()
        main(["--home", str(ours.home), "engine", "rm", "flaky"])


def test_second_mr_notebook_serve_as_remote(
    ours: ServerProcess, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    peer_home = tmp_path / "peer"
    store = Store(peer_home)
    store.import_gguf(tiny_model_factory(reply="Peer says hi."), "ai/tiny")
    store.import_gguf(tiny_model_factory(pooling="mean"), "ai/embed")
    store.import_gguf(tiny_model_factory(reply=HERMES_REPLY, chat_template=HERMES_TEMPLATE), "ai/tools")
    store.import_gguf(tiny_model_factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE), "ai/thinker")
    peer = ServerProcess(peer_home)
    try:
        url = peer.url.rstrip("/")
        assert main(["--home", str(ours.home), "engine", "add", "peer", url, "--kind", "model-runner"]) == 0
        client = sdk(ours)
        assert {"peer/ai/tiny:latest", "peer/ai/embed:latest"} <= {m.id for m in client.models.list()}
        reply = client.chat.completions.create(model="peer/ai/tiny", messages=HI)  # type: ignore[arg-type]
        assert reply.choices[0].message.content == "Peer says hi."
        ours_vectors = client.embeddings.create(model="peer/ai/embed", input=["one", "two"])
        theirs = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).embeddings.create(
            model="ai/embed", input=["one", "two"]
        )
        assert [d.embedding for d in ours_vectors.data] == [d.embedding for d in theirs.data]
        assert ours_vectors.data[0].embedding != ours_vectors.data[1].embedding
        # The peer answers tool calls and reasoning structured; they come back structured from ours too.
        asked = [{"role": "user", "content": "Weather in Paris?"}]
        called = client.chat.completions.create(model="peer/ai/tools", messages=asked, tools=[WEATHER_TOOL])  # type: ignore[arg-type,list-item]
        (call,) = called.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert called.choices[0].finish_reason == "tool_calls"
        thought = client.chat.completions.create(model="peer/ai/thinker", messages=HI)  # type: ignore[arg-type]
        assert thought.choices[0].message.content == "Hello there!"
        assert (thought.choices[0].message.model_extra or {}).get("reasoning_content") == "The user greets me."
    finally:
        main(["--home", str(ours.home), "engine", "rm", "peer"])
        peer.stop()


class _Recorded(BaseHTTPRequestHandler):
    """Serves recorded answers of vLLM and Ollama, and a few hostile ones; remembers Authorization headers."""

    seen: ClassVar[list[str | None]] = []
    routes: ClassVar[dict[str, tuple[int, bytes]]] = {
        "/vllm/v1/models": (200, (ANSWERS / "vllm_v1_models.json").read_bytes()),
        "/ollama/v1/models": (200, (ANSWERS / "ollama_v1_models.json").read_bytes()),
        "/ollama/api/tags": (200, (ANSWERS / "ollama_api_tags.json").read_bytes()),
        "/junk/v1/models": (200, b"<html>not json</html>"),
        "/huge/v1/models": (200, json.dumps({"data": [{"id": f"m{i}"} for i in range(5000)]}).encode()),
        "/refuses/v1/chat/completions": (400, b'{"error": {"message": "This model\'s maximum context length is 8"}}'),
    }

    def _answer(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        status, body = self.routes.get(self.path, (404, b'{"error": "no such route"}'))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def test_discovery_of_recorded_vllm_and_ollama_answers(store_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_KEY", "vllm-secret")
    with LoopbackServer(_Recorded) as server:
        for spec in (
            {"name": "vllm", "url": f"{server.url}/vllm/v1", "api_key_env": "VLLM_KEY"},
            {"name": "ollama", "url": f"{server.url}/ollama", "kind": "ollama"},
            {"name": "ollama-openai", "url": f"{server.url}/ollama"},
            {"name": "junk", "url": f"{server.url}/junk"},
            {"name": "huge", "url": f"{server.url}/huge"},
            {"name": "refuses", "url": f"{server.url}/refuses"},
        ):
            add_spec(store_home, EngineSpec.parse(spec))

        async def scenario() -> tuple[dict[str, list[str]], RemoteEngines]:
            registry = RemoteEngines(store_home)
            found: dict[str, list[str]] = {}
            for engine, model in await registry.models(refresh=True):
                found.setdefault(engine.name, []).append(model)
            engine, model = registry.resolve("refuses/any") or (None, "")
            assert engine is not None
            with pytest.raises(RemoteEngineError) as refused:
                await registry.embed(engine, model, ["x"])
            assert refused.value.http_status == 404 and "Engine refuses" in str(refused.value)
            await registry.close()
            return found, registry

        found, registry = asyncio.run(scenario())
    assert found["vllm"] == ["meta-llama/Llama-3.1-70B-Instruct", "sql-lora"]
    assert found["ollama"] == ["llama3.2:latest", "qwen2.5-coder:7b"]
    assert found["ollama-openai"][2] == "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M"
    assert len(found["huge"]) == 1000  # a bound on what one engine may list
    assert "junk" not in found
    junk = registry.engines()["junk"].status()
    assert junk["healthy"] is False and "not JSON" in junk["last_error"]
    assert "Bearer vllm-secret" in _Recorded.seen  # the key, read from the environment when asked


def test_engine_upstream_refusal_keeps_its_status(store_home: Path) -> None:
    with LoopbackServer(_Recorded) as server:
        add_spec(store_home, EngineSpec.parse({"name": "refuses", "url": f"{server.url}/refuses"}))
        from mr_notebook.engine import GenerationParams, Runner, collect

        async def scenario() -> None:
            runner = Runner(Store(store_home))
            try:
                with pytest.raises(RemoteEngineError) as refused:
                    await collect(runner.chat("refuses/big", HI, GenerationParams.from_request({})))
                assert refused.value.http_status == 400
                assert "Engine refuses" in str(refused.value) and "maximum context length" in str(refused.value)
                with pytest.raises(InvalidRequest, match="remote engine refuses"):
                    await runner.tokenize("refuses/big", "hi")
            finally:
                await runner.close()

        asyncio.run(scenario())


@pytest.mark.parametrize(
    ("spec", "wrong"),
    [
        ({"name": "Bad Name", "url": "http://h:1"}, "name"),
        ({"name": "v1", "url": "http://h:1"}, "name"),
        ({"name": "ok", "url": "file:///etc/passwd"}, "url"),
        ({"name": "ok", "url": "http://user:pw@h:1"}, "url"),
        ({"name": "ok", "url": "http://h:1", "api_key_env": "sk-live key"}, "api_key_env"),
        ({"name": "ok", "url": "http://h:1", "kind": "grpc"}, "kind"),
    ],
)
def test_engine_specs_are_checked(spec: dict[str, Any], wrong: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        EngineSpec.parse(spec)
    assert error.value.param == wrong


def test_cli_add_ls_rm(store_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LoopbackServer(_Recorded) as server:
        assert main(["engine", "add", "vllm", f"{server.url}/vllm"]) == 0
        assert main(["engine", "add", "bad", "http://user:secret@h:1"]) == 1
        capsys.readouterr()
        assert main(["engine", "ls"]) == 0
        out = capsys.readouterr().out
        assert "vllm/meta-llama/Llama-3.1-70B-Instruct" in out and "up" in out and "bad" not in out
        assert main(["list"]) == 0
        assert "vllm/sql-lora" in capsys.readouterr().out
    assert main(["engine", "rm", "vllm"]) == 0
    assert main(["engine", "rm", "vllm"]) == 1
    assert json.loads(config_path(store_home).read_text()) == {"engines": []}


def test_chat_magic_in_a_kernel_reaches_the_remote_through_our_server(ours: ServerProcess, tmp_path: Path) -> None:
    from jupyter_client.manager import KernelManager
    from test_kernel import _clean_env, execute, text_of

    env = _clean_env(tmp_path / "kernel-home")
    env["MR_NOTEBOOK_URL"] = ours.url  # as the Jupyter extension sets it; the kernel's env has no BOX_KEY
    assert "BOX_KEY" not in env
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, messages = execute(kc, "%load_ext mr_notebook")
        assert reply["status"] == "ok", text_of(messages)
        reply, messages = execute(kc, "%%chat -m box/tiny\nSay hello")
        assert reply["status"] == "ok", text_of(messages)
        assert DEFAULT_REPLY in text_of(messages)
        code = "import mr_notebook\nprint(mr_notebook.map('Say {}', ['a', 'b'], model='box/tiny', progress=False))"
        reply, messages = execute(kc, code)
        assert reply["status"] == "ok", text_of(messages)
        assert text_of(messages).strip() == repr([DEFAULT_REPLY, DEFAULT_REPLY])
        reply, messages = execute(kc, "%model list")
        assert reply["status"] == "ok" and "box/tiny" in text_of(messages), text_of(messages)
        reply, messages = execute(kc, "%model engine ls")
        shown = text_of(messages)
        assert reply["status"] == "ok", shown
        assert "box" in shown and "up" in shown and "box/tiny" in shown
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _event(text: str, finish: str | None = None) -> bytes:
    chunk = {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n".encode()


class _Scripted(BaseHTTPRequestHandler):
    """An engine that misbehaves as told by the first path segment (an engine may be attacker-run)."""

    protocol_version = "HTTP/1.1"
    gate: ClassVar[Any] = None  # a threading.Event the "gate" engine waits for before answering

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.path.split("/")[1]
        if kind == "redirect":
            self.send_response(307)
            self.send_header("Location", "http://127.0.0.1:9/v1/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "hang":
            time.sleep(3)  # longer than the engine's timeout: nothing at all arrives
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        if kind == "gate":
            self.gate.wait(30)
        self.wfile.write(_event("first "))
        self.wfile.flush()
        if kind == "stall":
            time.sleep(3)  # the answer started, then nothing: a timeout mid-answer
        elif kind == "garbage":
            self.wfile.write(b"data: {not json\n\n")
        elif kind == "error":
            self.wfile.write(b'data: {"error": {"message": "CUDA out of memory"}}\n\n')
        elif kind == "bigline":
            self.wfile.write(b"data: " + b"x" * (5 * 1024 * 1024) + b"\n\n")
        if kind != "cut":  # "cut": [DONE] with no finish reason, as llama_cpp.server ends an interrupted stream
            self.wfile.write(_event("last", "stop"))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def log_message(self, *args: Any) -> None:
        pass


async def _answer(runner: Any, model: str) -> str:
    from mr_notebook.engine import GenerationParams, collect

    return (await collect(runner.chat(model, HI, GenerationParams.from_request({})))).text


@pytest.mark.parametrize(
    ("kind", "status", "says"),
    [
        ("redirect", 502, "answered 307"),
        ("hang", 504, "sent nothing for 1 s"),
        ("stall", 504, "sent nothing for 1 s"),
        ("garbage", 502, "not JSON"),
        ("error", 502, "CUDA out of memory"),
        ("bigline", 502, "over 4194304 bytes"),
        ("cut", 502, "without a finish reason"),
    ],
)
def test_misbehaving_engines_give_clear_errors(store_home: Path, kind: str, status: int, says: str) -> None:
    from mr_notebook.engine import Runner

    with LoopbackServer(_Scripted) as server:
        add_spec(store_home, EngineSpec.parse({"name": "odd", "url": f"{server.url}/{kind}", "timeout": 1}))

        async def scenario() -> None:
            runner = Runner(Store(store_home))
            try:
                with pytest.raises(RemoteEngineError) as failed:
                    await _answer(runner, "odd/m")
                assert failed.value.http_status == status
                assert "odd" in str(failed.value) and says in str(failed.value)
                assert runner.remote.engines()["odd"].in_flight == 0
            finally:
                await runner.close()

        asyncio.run(scenario())


def test_concurrency_limit_per_engine(store_home: Path) -> None:
    import threading

    from mr_notebook.engine import Runner

    _Scripted.gate = threading.Event()
    with LoopbackServer(_Scripted) as server:
        add_spec(store_home, EngineSpec.parse({"name": "one", "url": f"{server.url}/gate", "max_concurrency": 1}))

        async def scenario() -> None:
            runner = Runner(Store(store_home))
            try:
                tasks = [asyncio.ensure_future(_answer(runner, "one/m")) for _ in range(3)]
                engine = runner.remote.engines()["one"]
                for _ in range(200):
                    if engine.in_flight == 1 and engine.waiting == 2:
                        break
                    await asyncio.sleep(0.05)
                assert (engine.in_flight, engine.waiting) == (1, 2)  # one at the engine, two waiting here
                tasks[2].cancel()  # a client that gives up while waiting leaves the queue
                _Scripted.gate.set()
                assert await asyncio.gather(*tasks[:2]) == ["first last", "first last"]
                assert engine.in_flight == engine.waiting == 0 and engine.requests == 2
            finally:
                await runner.close()

        asyncio.run(scenario())


def test_connect_errors_are_retried_before_the_first_byte(store_home: Path) -> None:
    import threading
    from http.server import ThreadingHTTPServer

    from mr_notebook.engine import Runner

    port = free_port()
    add_spec(store_home, EngineSpec.parse({"name": "late", "url": f"http://127.0.0.1:{port}/ok"}))
    servers: list[ThreadingHTTPServer] = []

    refused = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "connect failed" in record.getMessage():
                refused.set()

    watch = Watch()
    logger = logging.getLogger("mr_notebook.engine.remote.client")
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)

    def come_up() -> None:  # the engine starts listening once the first connection was refused
        assert refused.wait(30)
        server = ThreadingHTTPServer(("127.0.0.1", port), _Scripted)
        servers.append(server)
        server.serve_forever()

    async def scenario() -> None:
        runner = Runner(Store(store_home))
        try:
            threading.Thread(target=come_up, daemon=True).start()
            assert await _answer(runner, "late/m") == "first last"
        finally:
            await runner.close()

    try:
        asyncio.run(scenario())
        assert refused.is_set()
    finally:
        logger.removeHandler(watch)
        logger.setLevel(logging.NOTSET)
        for server in servers:
            server.shutdown()
            server.server_close()


def test_broken_engines_file_leaves_local_models_alone(store_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_home.mkdir(parents=True)
    config_path(store_home).write_text("{half a file")
    registry = RemoteEngines(store_home)
    assert registry.resolve("gpu/x") is None and registry.engines() == {}
    assert registry.problem is not None and "engines.json" in registry.problem
    assert main(["engine", "ls"]) == 0
    assert "Fix or delete the file" in capsys.readouterr().out


def test_engine_name_may_not_hide_stored_models(store: Store, tiny_model: Path) -> None:
    store.import_gguf(tiny_model, "myorg/tiny")
    assert main(["engine", "add", "myorg", "http://127.0.0.1:9"]) == 1
    assert not config_path(store.home).exists()
    assert main(["engine", "add", "other", "http://127.0.0.1:9"]) == 0
