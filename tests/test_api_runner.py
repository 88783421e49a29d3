"""Docker Model Runner's routes: /models…, /engines/…, /health, /metrics (a real server per module)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_api_support import EMBED, LONG, MODEL, NEVER, REPLY, ServerProcess, chat_body, fill_store, wait_until

from mr_notebook.store import Store
from mr_notebook.testing.pull_fixtures import local_registry  # noqa: F401
from mr_notebook.testing.registry import LocalRegistry
from mr_notebook.testing.tiny_model import TinyModelFactory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("runner_home")
    fill_store(home, tiny_model_factory)
    process = ServerProcess(home)
    yield process
    process.stop()


def get(server: ServerProcess, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=30)


def test_models_list_and_inspect_in_docker_shape(server: ServerProcess) -> None:
    models = get(server, "models").json()
    tags = {tag for model in models for tag in model["tags"]}
    assert {MODEL, NEVER, EMBED, LONG} <= tags
    one = next(m for m in models if MODEL in m["tags"])
    assert one["id"].startswith("sha256:") and one["config"]["format"] == "gguf"
    assert one["config"]["architecture"] == "llama"
    inspected = get(server, "models/llama3.2:1B-Q8_0").json()
    assert inspected["id"] == one["id"] and inspected["tags"] == [MODEL]


def test_tag_then_remove(server: ServerProcess) -> None:
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


def test_remove_loaded_model_needs_force(server: ServerProcess) -> None:
    httpx.post(server.url + f"models/{EMBED}/tag", json={"target": "ai/doomed:latest"}, timeout=30)
    httpx.delete(server.url + f"models/{EMBED}", timeout=30)  # leave one name, then load it
    assert httpx.post(server.url + "v1/embeddings", json={"model": "ai/doomed", "input": "x"}, timeout=60).is_success
    refused = httpx.delete(server.url + "models/ai/doomed", timeout=30)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_in_use"
    forced = httpx.delete(server.url + "models/ai/doomed?force=true", timeout=30)
    assert forced.status_code == 200 and forced.json()[-1]["Deleted"].startswith("sha256:")
    assert all(row["model"] != "ai/doomed" for row in server.ps())


def test_ps_unload_and_status(server: ServerProcess) -> None:
    assert httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60).is_success
    rows = server.ps()
    row = next(r for r in rows if r["model"] == MODEL)
    for key in ("model_name", "backend_name", "mode", "last_used", "pid", "memory", "context_size", "expires_at"):
        assert key in row
    assert row["backend_name"] == "llama.cpp" and isinstance(row["pid"], int) and row["memory"] > 0
    status = get(server, "engines/status").json()
    assert status["status"] == "running" and status["loaded_models"] >= 1 and status["mode"] == "standalone"
    assert get(server, "").text == "Ollama is running"  # Ollama clients probe the root; status JSON is above
    unloaded = httpx.post(server.url + "engines/unload", json={"models": [MODEL]}, timeout=30).json()
    assert unloaded == {"unloaded_runners": 1}
    assert all(r["model"] != MODEL for r in server.ps())
    httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60)
    assert httpx.post(server.url + "engines/unload", json={"all": True}, timeout=30).json()["unloaded_runners"] >= 1
    assert server.ps() == []
    bad = httpx.post(server.url + "engines/unload", json={"models": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "models"


def test_configure_persists_and_preloads(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "engines/_configure", json={"model": NEVER, "context_size": 256, "keep_alive": "10m"}, timeout=30
    )
    assert response.status_code == 202
    assert response.json()["settings"] == {"context_size": 256, "keep_alive": 600.0}
    assert Store(server.home).get(NEVER).settings["context_size"] == 256
    wait_until(lambda: any(r["model"] == NEVER for r in server.ps()), message="the preload")
    row = next(r for r in server.ps() if r["model"] == NEVER)
    assert row["context_size"] == 256 and row["keep_alive"] == 600.0
    bad = httpx.post(server.url + "engines/_configure", json={"model": NEVER, "context_size": "big"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "context_size"


def test_df_health_metrics(server: ServerProcess) -> None:
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
    server: ServerProcess,
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


def test_create_errors(server: ServerProcess, local_registry: LocalRegistry) -> None:  # noqa: F811
    bad = httpx.post(server.url + "models/create", json={"from": "Bad//Name"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_model_reference"
    missing = httpx.post(server.url + "models/create", json={"from": f"{local_registry.host}/ai/absent:v1"}, timeout=60)
    assert missing.status_code >= 400 and "ai/absent" in missing.json()["error"]["message"]
    assert httpx.post(server.url + "models/create", json={}, timeout=30).json()["error"]["param"] == "from"


def test_purge(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    home = tmp_path / "home"
    fill_store(home, tiny_model_factory)
    server = ServerProcess(home)
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
