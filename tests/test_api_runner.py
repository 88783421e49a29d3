"""Docker Model Runner's routes: /models…, /engines/…, /health, /metrics (served from a thread of this process)."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_support import EMBED, LONG, MODEL, NEVER, REPLY, chat_body, fill_store, wait_until

from mr_notebook.api.standalone import start_in_thread
from mr_notebook.service import SyncService
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.testing.pull_fixtures import local_registry  # noqa: F401
from mr_notebook.testing.registry import LocalRegistry
from mr_notebook.testing.tiny_model import TinyModelFactory


class InProcessServer:
    """The API served from a thread of this process (``start_in_thread``): the handlers are what is tested here,
    not a server process's start-up and shutdown (test_api_lifecycle does those with a real ``serve``)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.store = Store(home)
        self.sync = SyncService(self.store, settings=EngineSettings(keep_alive=300))
        self.handle = start_in_thread(self.sync, self.store)
        self.url = self.handle.url

    def ps(self) -> list[dict[str, object]]:
        rows = httpx.get(self.url + "engines/ps", timeout=10).json()
        assert isinstance(rows, list)
        return rows

    def stop(self) -> None:
        self.handle.stop()
        self.sync.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[InProcessServer]:
    home = tmp_path_factory.mktemp("runner_home")
    fill_store(home, tiny_model_factory)
    process = InProcessServer(home)
    yield process
    process.stop()


def get(server: InProcessServer, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30)


def test_models_list_and_inspect_in_docker_shape(server: InProcessServer) -> None:
    models = get(server, "models").json()
    tags = {tag for model in models for tag in model["tags"]}
    assert {MODEL, NEVER, EMBED, LONG} <= tags
    one = next(m for m in models if MODEL in m["tags"])
    assert one["id"].startswith("sha256:") and one["config"]["format"] == "gguf"
    assert one["config"]["architecture"] == "llama"
    inspected = get(server, "models/llama3.2:1B-Q8_0").json()
    assert inspected["id"] == one["id"] and inspected["tags"] == [MODEL]


def test_tag_then_remove(server: InProcessServer) -> None:
    response = httpx.post(server.url + f"models/{MODEL}/tag", json={"target": "me/copy:v1"}, timeout=30)
    assert response.status_code == 201 and "me/copy:v1" in response.json()["model"]["tags"]
    response = httpx.post(server.url + f"models/{MODEL}/tag?repo=me/other&tag=v2", timeout=30)
    assert response.status_code == 201
    assert get(server, "models/me/copy:v1").json()["id"] == get(server, f"models/{MODEL}").json()["id"]
    removed = httpx.delete(server.url + "models/me/copy:v1", timeout=30)
    assert removed.status_code == 200 and removed.json() == [{"Untagged": "me/copy:v1"}]
    assert httpx.delete(server.url + "models/me/other:v2", timeout=30).status_code == 200
    assert get(server, "models/me/copy:v1").status_code == 404
    assert httpx.post(server.url + f"models/{MODEL}/tag", json={}, timeout=30).json()["error"]["param"] == "target"


def test_remove_unloads_an_idle_model_and_refuses_a_busy_one_without_force(server: InProcessServer) -> None:
    httpx.post(server.url + f"models/{EMBED}/tag", json={"target": "ai/doomed:latest"}, timeout=30)
    httpx.delete(server.url + f"models/{EMBED}", timeout=30)  # leave one name, then load it
    assert httpx.post(server.url + "v1/embeddings", json={"model": "ai/doomed", "input": "x"}, timeout=60).is_success
    removed = httpx.delete(server.url + "models/ai/doomed", timeout=30)  # idle: unloaded, then deleted
    assert removed.status_code == 200 and removed.json()[-1]["Deleted"].startswith("sha256:")
    assert all(row["model"] != "ai/doomed" for row in server.ps())


def test_remove_refuses_a_busy_model_without_force(
    server: InProcessServer, tiny_model_factory: TinyModelFactory
) -> None:
    store = Store(server.home)  # the server's store on disk: a model added here is served at once
    store.import_gguf(tiny_model_factory(never_stop=True, reply="la ", context_length=65536, seed=21), "ai/busy")
    store.configure("ai/busy", context_size=65536)
    body = chat_body("ai/busy", stream=True, max_tokens=60_000)
    with httpx.stream("POST", server.url + "v1/chat/completions", json=body, timeout=60) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if "la " in line)  # answering now
        refused = httpx.delete(server.url + "models/ai/busy", timeout=30)
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_in_use"
        assert "force" in refused.json()["error"]["message"]
        bad = httpx.delete(server.url + "models/ai/busy?force=maybe", timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "force"
        forced = httpx.delete(server.url + "models/ai/busy?force=true", timeout=30)
        assert forced.status_code == 200 and forced.json()[0] == {"Untagged": "ai/busy:latest"}
        rest = list(lines)  # the stream ends, with an error event rather than silence
    assert any('"error"' in line for line in rest)
    assert all(row["model"] != "ai/busy" for row in server.ps())


def test_ps_unload_and_status(server: InProcessServer) -> None:
    assert httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60).is_success
    rows = server.ps()
    row = next(r for r in rows if r["model"] == MODEL)
    for key in ("model_name", "backend_name", "mode", "last_used", "pid", "memory", "context_size", "expires_at"):
        assert key in row
    assert row["backend_name"] == "llama.cpp" and isinstance(row["pid"], int) and row["memory"] > 0
    status = get(server, "engines/status").json()
    assert status["status"] == "running" and status["loaded_models"] >= 1 and status["mode"] == "kernel"
    assert get(server, "").text == "Ollama is running"  # Ollama clients probe the root; status JSON is above
    unloaded = httpx.post(server.url + "engines/unload", json={"models": [MODEL]}, timeout=30).json()
    assert unloaded == {"unloaded_runners": 1}
    assert all(r["model"] != MODEL for r in server.ps())
    httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60)
    assert httpx.post(server.url + "engines/unload", json={"all": True}, timeout=30).json()["unloaded_runners"] >= 1
    assert server.ps() == []
    bad = httpx.post(server.url + "engines/unload", json={"models": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "models"


def test_load_route_answers_when_loaded_and_streams_progress(server: InProcessServer) -> None:
    httpx.post(server.url + "engines/unload", json={"all": True}, timeout=30)
    loaded = httpx.post(server.url + "engines/load", json={"model": MODEL, "keep_alive": "2m"}, timeout=60)
    assert loaded.status_code == 200 and loaded.json()["model"] == MODEL and loaded.json()["keep_alive"] == 120
    assert [row["pid"] for row in server.ps() if row["model"] == MODEL] == [loaded.json()["pid"]]
    body = {"model": NEVER, "stream": True}
    with httpx.stream("POST", server.url + "engines/load", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line.get("status") for line in lines] == ["loading", "loaded", None]
    assert lines[-1]["type"] == "success" and lines[-1]["model"]["model"] == NEVER
    missing = httpx.post(server.url + "engines/load", json={"model": "ai/absent", "stream": True}, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.post(server.url + "engines/load", json={}, timeout=30).json()["error"]["param"] == "model"


def test_configure_persists_and_reloads_idle_workers(server: InProcessServer) -> None:
    httpx.post(server.url + "engines/unload", json={"models": [NEVER]}, timeout=30)
    response = httpx.post(
        server.url + "engines/_configure", json={"model": NEVER, "context_size": 256, "keep_alive": "10m"}, timeout=30
    )
    assert response.status_code == 202 and response.json()["status"] == "configured"
    assert response.json()["settings"] == {"context_size": 256, "keep_alive": 600.0}
    assert Store(server.home).get(NEVER).settings["context_size"] == 256
    assert all(r["model"] != NEVER for r in server.ps())  # a settings change loads nothing by itself
    first = httpx.post(server.url + "engines/load", json={"model": NEVER}, timeout=60).json()
    assert first["context_size"] == 256 and first["keep_alive"] == 600.0
    again = httpx.post(server.url + "engines/_configure", json={"model": NEVER, "context_size": 512}, timeout=30)
    assert again.json()["reloaded"] == [NEVER] and again.json()["status"] == "loading"
    wait_until(lambda: any(r["model"] == NEVER and r["context_size"] == 512 for r in server.ps()), message="reload")
    bad = httpx.post(server.url + "engines/_configure", json={"model": NEVER, "context_size": "big"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "context_size"


def test_models_load_takes_an_upload_or_a_path_and_prune(
    server: InProcessServer, tiny_model_factory: TinyModelFactory, tmp_path: Path
) -> None:
    data = tiny_model_factory(reply="Sent over HTTP.", seed=11).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    octets = {"Content-Type": "application/octet-stream"}
    url = server.url + "models/load"
    sent = httpx.post(url, params={"name": "me/sent", "digest": digest}, content=data, headers=octets, timeout=60)
    assert sent.status_code == 201 and sent.json()["model"]["tags"] == ["me/sent:latest"]
    answer = httpx.post(server.url + "v1/chat/completions", json=chat_body("me/sent"), timeout=60).json()
    assert answer["choices"][0]["message"]["content"] == "Sent over HTTP."
    html = httpx.post(url, params={"name": "me/html"}, content=b"<html>" + data, headers=octets, timeout=60)
    assert html.status_code == 400 and html.json()["error"]["code"] == "invalid_model_file"
    wrong = httpx.post(url, params={"name": "me/x", "digest": "sha256:" + "1" * 64}, content=data, headers=octets)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "digest"
    assert httpx.post(url, content=data, headers=octets).json()["error"]["param"] == "name"
    assert get(server, "models/me/html").status_code == 404 and get(server, "models/me/x").status_code == 404
    local = tmp_path / "local.gguf"
    local.write_bytes(tiny_model_factory(reply="Linked.", seed=12).read_bytes())
    linked = httpx.post(url, json={"name": "me/linked", "path": str(local)}, timeout=60)
    assert linked.status_code == 201
    assert Store(server.home).paths(Store(server.home).get("me/linked"))[0].stat().st_ino == local.stat().st_ino
    absent = httpx.post(url, json={"name": "me/none", "path": str(tmp_path / "none.gguf")}, timeout=30)
    assert absent.status_code == 400 and absent.json()["error"]["code"] == "file_not_found"
    pruned = httpx.post(server.url + "models/prune", timeout=30)
    assert pruned.status_code == 200 and set(pruned.json()) == {"files", "bytes"}


def test_df_health_metrics(server: InProcessServer) -> None:
    df = get(server, "engines/df").json()
    assert df["models_disk_usage"] == df["total"] > 0 and df["models"] >= 3
    assert get(server, "health").json() == {"status": "ok"}
    httpx.post(server.url + "v1/chat/completions", json=chat_body(stream=True), timeout=60)
    metrics = get(server, "metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'mr_notebook_requests_total{method="POST",route="chat_completions",status="200"}' in text
    assert f'mr_notebook_generated_tokens_total{{model="{MODEL}"}}' in text
    assert "mr_notebook_time_to_first_token_seconds_count" in text
    assert "mr_notebook_tokens_per_second_bucket" in text
    assert "mr_notebook_loaded_models " in text and "mr_notebook_queue_depth" in text


def test_create_pulls_with_ndjson_progress(
    server: InProcessServer,
    local_registry: LocalRegistry,  # noqa: F811
    tiny_model_factory: TinyModelFactory,
) -> None:
    gguf = tiny_model_factory(reply="Pulled over HTTP.", seed=5)
    local_registry.push_model("ai/pulled", "1B-Q8_0", [gguf])
    reference = f"{local_registry.host}/ai/pulled:1B-Q8_0"
    with httpx.stream("POST", server.url + "models/create", json={"from": reference}, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["type"] == "success" and lines[-1]["downloaded"] == gguf.stat().st_size
    progress = [line for line in lines if line["type"] == "progress"]
    assert progress and {"message", "total", "layer"} <= set(progress[-1])
    assert set(progress[-1]["layer"]) == {"id", "size", "current"}
    answer = httpx.post(server.url + "v1/chat/completions", json=chat_body(reference), timeout=60).json()
    assert answer["choices"][0]["message"]["content"] == "Pulled over HTTP."
    again = httpx.post(server.url + "models/create", json={"from": reference}, timeout=60)
    assert json.loads(again.text.splitlines()[-1])["already_present"] is True


def test_create_errors(server: InProcessServer, local_registry: LocalRegistry) -> None:  # noqa: F811
    bad = httpx.post(server.url + "models/create", json={"from": "Bad//Name"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_model_reference"
    missing = httpx.post(server.url + "models/create", json={"from": f"{local_registry.host}/ai/absent:v1"}, timeout=60)
    assert missing.status_code >= 400 and "ai/absent" in missing.json()["error"]["message"]
    assert httpx.post(server.url + "models/create", json={}, timeout=30).json()["error"]["param"] == "from"


def test_purge(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    home = tmp_path / "home"
    fill_store(home, tiny_model_factory)
    server = InProcessServer(home)
    try:
        assert (
            httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60).json()["choices"][0][
                "message"
            ]["content"]
            == REPLY
        )
        purged = httpx.delete(server.url + "models/purge", timeout=30)
        assert purged.status_code == 200 and purged.json()["models"] == 4
        assert get(server, "models").json() == [] and server.ps() == []
    finally:
        server.stop()


def test_an_upload_cut_short_leaves_nothing_behind(
    server: InProcessServer, tiny_model_factory: TinyModelFactory
) -> None:
    data = tiny_model_factory(reply="Never whole.", seed=13).read_bytes() * 8  # past the 1 MiB write buffer
    host, port = server.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    uploads = server.home / "uploads"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        head = (
            f"POST /models/load?name=me/cut HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data) * 2}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)  # half of what was announced, then the client goes away
        wait_until(lambda: any(uploads.glob("*.part")), message="the partial upload")
    wait_until(lambda: not any(uploads.glob("*.part")), message="the partial upload to be deleted")
    assert get(server, "models/me/cut").status_code == 404
