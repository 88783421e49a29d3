"""The engine interface front ends use: discovery, and the same verbs in-process and over HTTP.

The remote engine talks to a real API server in a subprocess (what ``mr-notebook serve`` runs); the local
engine runs real workers on tiny models. Every verb is checked against both, so magics and widgets see the
same data whichever engine answers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mr_notebook.client import ChatStream, Engine, connect, error_for_code, runtime_file
from mr_notebook.client.local import LocalEngine
from mr_notebook.client.remote import RemoteEngine
from mr_notebook.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidReference,
    ModelNotFound,
    MrNotebookError,
)
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.waiting import wait_for

HI = [{"role": "user", "content": "hi"}]
LOOP = "one two three "


def start_server(home: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """The API server `mr-notebook serve` runs, on a free port, announcing itself in ``home``."""
    code = "from mr_notebook.api.standalone import serve; serve(port=0)"
    full_env = {**os.environ, "MR_NOTEBOOK_HOME": str(home), **(env or {})}
    for name in ("MR_NOTEBOOK_URL", "MR_NOTEBOOK_TOKEN", "MR_NOTEBOOK_API_KEY"):
        full_env.pop(name, None)
    process = subprocess.Popen([sys.executable, "-c", code], env=full_env, stderr=subprocess.DEVNULL)
    path = runtime_file(home)

    def announced() -> dict[str, Any] | None:
        if process.poll() is not None:
            raise AssertionError("the API server exited early")
        try:
            info: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return info if info.get("pid") == process.pid else None

    return process, wait_for(announced, "the server's runtime file")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def hub(tiny_model_factory: TinyModelFactory) -> Iterator[LocalHub]:
    with LocalHub() as hub:
        hub.add_repo("test/pulled-GGUF", {"pulled-Q8_0.gguf": tiny_model_factory(reply="Pulled!", seed=3)})
        yield hub


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("client") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True, context_length=4096), "ai/loop")
    store.import_gguf(tiny_model_factory(pooling="mean", seed=2), "ai/embed")
    return home


@pytest.fixture(scope="module")
def server(shared_home: Path, hub: LocalHub) -> Iterator[dict[str, Any]]:
    process, info = start_server(shared_home, {"HF_ENDPOINT": hub.url})
    yield info
    stop_server(process)


@pytest.fixture(params=["local", "remote"])
def engine(request: pytest.FixtureRequest, shared_home: Path, hub: LocalHub) -> Iterator[Engine]:
    """The same store through each kind of engine."""
    env = {"MR_NOTEBOOK_HOME": str(shared_home), "HF_ENDPOINT": hub.url}
    if request.param == "remote":
        info = request.getfixturevalue("server")
        engine = connect(shared_home, env)
        assert isinstance(engine, RemoteEngine) and engine.url == info["url"]
    else:
        engine = LocalEngine(Store(shared_home), env=env)
    yield engine
    engine.unload(None)
    engine.close()


# ---------------------------------------------------------------------- discovery
def test_connect_prefers_the_jupyter_url(tmp_path: Path) -> None:
    env = {"MR_NOTEBOOK_URL": "http://127.0.0.1:9/base/mr/", "MR_NOTEBOOK_TOKEN": "secret"}
    engine = connect(tmp_path, env)
    try:
        assert isinstance(engine, RemoteEngine)
        assert (engine.mode, engine.source, engine.url) == ("remote", "MR_NOTEBOOK_URL", env["MR_NOTEBOOK_URL"])
        assert engine.endpoint() == ("http://127.0.0.1:9/base/mr/v1", "secret")
        with pytest.raises(EngineUnavailable, match="Cannot reach the model engine"):
            engine.list()
    finally:
        engine.close()


def test_connect_skips_a_stale_runtime_file(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    path = runtime_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"url": "http://127.0.0.1:9/", "pid": gone.pid, "auth": False}))
    engine = connect(tmp_path, {})
    assert isinstance(engine, LocalEngine) and engine.source == "in-process"
    # A live pid whose URL does not answer (a reused pid) is stale too.
    path.write_text(json.dumps({"url": "http://127.0.0.1:9/", "pid": os.getpid(), "auth": False}))
    engine = connect(tmp_path, {})
    assert isinstance(engine, LocalEngine)
    assert not engine.started  # discovery starts no Runner


def test_connect_finds_a_running_server(shared_home: Path, server: dict[str, Any]) -> None:
    engine = connect(shared_home, {})
    try:
        assert isinstance(engine, RemoteEngine)
        assert engine.source == f"runtime file {runtime_file(shared_home)}"
        assert engine.endpoint() == (server["url"] + "v1", "not-needed")
        status = engine.status()
        assert status["mode"] == "remote" and status["url"] == server["url"] and status["running"]
    finally:
        engine.close()


def test_http_errors_become_core_errors() -> None:
    assert isinstance(error_for_code("model_not_found", "x", 404), ModelNotFound)
    error = error_for_code("context_length_exceeded", "too long", 400, "messages")
    assert isinstance(error, ContextLengthExceeded) and error.param == "messages"
    assert isinstance(error_for_code("something_new", "x", 404), ModelNotFound)
    assert type(error_for_code(None, "x", 500)) is MrNotebookError


# ---------------------------------------------------------------------- the same verbs on both engines
def test_store_verbs(engine: Engine, tiny_model_factory: TinyModelFactory) -> None:
    names = {tag for model in engine.list() for tag in model["tags"]}
    assert {"ai/tiny:latest", "ai/loop:latest", "ai/embed:latest"} <= names
    model = engine.inspect("ai/tiny")
    assert model["config"]["architecture"] == "llama" and model["id"].startswith("sha256:")
    assert engine.tag("ai/tiny", "ai/alias:v1")["tags"] == ["ai/alias:v1", "ai/tiny:latest"]
    assert engine.rm(["ai/alias:v1"]) == [{"Untagged": "ai/alias:v1"}]
    added = engine.package(str(tiny_model_factory(reply="Packaged.", seed=9)), "ai/packaged:v2")
    assert added["tags"] == ["ai/packaged:v2"]
    assert engine.configure("ai/packaged:v2", context_size=256)["settings"] == {"context_size": 256}
    removal = engine.rm(["ai/packaged:v2"])
    assert removal == [{"Untagged": "ai/packaged:v2"}, {"Deleted": added["id"]}]
    # Without the hard-link path a remote engine sends the bytes (POST /models/load): same model, same id.
    sent = engine.package(str(tiny_model_factory(reply="Packaged.", seed=9)), "ai/sent:v1", link=False)
    assert sent["id"] == added["id"] and sent["tags"] == ["ai/sent:v1"]
    assert engine.rm(["ai/sent:v1"])[-1] == {"Deleted": added["id"]}
    usage = engine.df()
    assert usage["models"] == 3 and usage["total"] >= usage["blobs"] > 0
    with pytest.raises(ModelNotFound, match="pull"):
        engine.inspect("ai/missing")
    with pytest.raises(InvalidReference):
        engine.inspect("Bad Name!")


def test_pull_reports_progress(engine: Engine) -> None:
    events: list[Any] = []
    summary = engine.pull("hf.co/test/pulled-GGUF:Q8_0", events.append)
    assert summary.model["tags"] == ["hf.co/test/pulled-gguf:Q8_0"], summary.model["tags"]
    assert not summary.already_present and summary.model["config"]["architecture"] == "llama"
    assert any(e.overall_total > 0 and e.digest for e in events)
    assert events[-1].overall_completed == events[-1].overall_total
    again = engine.pull("hf.co/test/pulled-GGUF:Q8_0")
    assert again.already_present and "up to date" in again.message
    engine.rm(summary.model["tags"])


def test_load_chat_ps_unload(engine: Engine) -> None:
    entry = engine.load("ai/tiny")
    assert entry["model"] == "ai/tiny:latest" and entry["pid"] > 0 and entry["memory"] > 0
    with engine.chat_stream("ai/tiny", HI, temperature=0) as stream:
        assert isinstance(stream, ChatStream)
        assert stream.text() == DEFAULT_REPLY
    assert stream.finish_reason == "stop"
    assert stream.usage is not None and stream.usage["completion_tokens"] > 0
    assert [e["model"] for e in engine.ps()] == ["ai/tiny:latest"]
    assert engine.unload(["ai/tiny"]) == 1
    assert engine.ps() == []


def test_errors_before_the_first_token_raise_from_the_stream(engine: Engine) -> None:
    with pytest.raises(ModelNotFound, match="pull"), engine.chat_stream("ai/missing", HI) as stream:
        next(stream)


def test_close_from_another_thread_stops_generation(engine: Engine) -> None:
    stream = engine.chat_stream("ai/loop", HI, max_tokens=100_000)
    first = next(stream)
    assert first
    received: list[str] = []
    consumer = threading.Thread(target=lambda: received.extend(stream))
    consumer.start()
    time.sleep(0.2)
    stream.close()  # what a Stop button does, from another thread than the consumer
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert stream.finish_reason == "cancelled"

    def idle() -> bool:
        return all(e["in_flight"] == 0 and e["queued"] == 0 for e in engine.ps())

    wait_for(idle, "the engine to stop generating", 10)
    # The worker serves the next request at once (it is not still generating the cancelled one).
    with engine.chat_stream("ai/loop", HI, max_tokens=4) as stream:
        assert stream.text().startswith("one two")
        assert stream.finish_reason == "length"


def test_embeddings(engine: Engine) -> None:
    vectors = engine.embed("ai/embed", ["first text", "second text"])
    assert len(vectors) == 2 and len(vectors[0]) == 64 and vectors[0] != vectors[1]


def test_endpoint_serves_the_openai_sdk(engine: Engine) -> None:
    import openai

    base_url, api_key = engine.endpoint()
    assert base_url.endswith("/v1")
    client = openai.OpenAI(base_url=base_url, api_key=api_key)
    reply = client.chat.completions.create(model="ai/tiny", messages=HI)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == DEFAULT_REPLY
