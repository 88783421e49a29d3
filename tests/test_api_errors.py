"""Bad input and limits through plain HTTP: always OpenAI's error shape, the right status, never HTML."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from test_api_support import (
    LONG,
    MODEL,
    ServerProcess,
    StreamInThread,
    add_long_model,
    chat_body,
    wait_until,
)

from mr_notebook.api.standalone import ServeError, serve
from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import TinyModelFactory

pytest_plugins = ["test_api_support"]  # its api_home / api_server fixtures


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    error = body["error"]
    assert isinstance(error, dict)
    return error


def post(server: ServerProcess, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(b"{not json", "not valid JSON"), (b"", "empty"), (b"[1, 2]", "JSON object"), (b"\xff\xfe", "UTF-8")],
)
def test_malformed_bodies(api_server: ServerProcess, content: bytes, fragment: str) -> None:
    headers = {"Content-Type": "application/json"}
    error = error_of(post(api_server, "v1/chat/completions", content=content, headers=headers), 400)
    assert fragment in str(error["message"]) and error["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
        ({"stop": 3}, "stop"),
        ({"model": 42}, "model"),
        ({"stream_options": [1]}, "stream_options"),
        ({"n": 0}, "n"),
        ({"top_p": 7}, "top_p"),
        ({"messages": "hello"}, "messages"),
    ],
)
def test_wrong_types_name_the_parameter(api_server: ServerProcess, extra: dict[str, object], param: str) -> None:
    error = error_of(post(api_server, "v1/chat/completions", json=chat_body(**extra)), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_fields_are_ignored(api_server: ServerProcess) -> None:
    response = post(api_server, "v1/chat/completions", json=chat_body(frobnicate=True, user="me", tools=None))
    assert response.status_code == 200


def test_missing_model(api_server: ServerProcess) -> None:
    error = error_of(
        post(api_server, "v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400
    )
    assert error["param"] == "model"


def test_unknown_model_gives_the_pull_hint(api_server: ServerProcess) -> None:
    for path, body in [
        ("v1/chat/completions", chat_body("ai/nope:1B")),
        ("v1/completions", {"model": "ai/nope:1B", "prompt": "x"}),
        ("v1/embeddings", {"model": "ai/nope:1B", "input": "x"}),
    ]:
        error = error_of(post(api_server, path, json=body), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "mr-notebook pull ai/nope:1B" in str(error["message"])
    error = error_of(httpx.get(api_server.url + "models/ai/nope:1B", timeout=10), 404)
    assert error["code"] == "model_not_found"


def test_unknown_routes_and_methods(api_server: ServerProcess) -> None:
    for method, path in [("GET", "nope"), ("POST", "v1/nope"), ("GET", "v2/models"), ("DELETE", "engines")]:
        error = error_of(httpx.request(method, api_server.url + path, timeout=10), 404)
        assert error["code"] == "not_found" and path in str(error["message"])
    error = error_of(httpx.get(api_server.url + "v1/chat/completions", timeout=10), 405)
    assert error["code"] == "method_not_allowed"
    error_of(httpx.put(api_server.url + "health", timeout=10), 405)


def test_huge_body_is_413(api_server: ServerProcess) -> None:
    content = json.dumps(chat_body(content="x" * (17 * 1024 * 1024))).encode()
    error = error_of(post(api_server, "v1/chat/completions", content=content), 413)
    assert error["code"] == "request_too_large"


def test_context_length_exceeded(api_server: ServerProcess) -> None:
    error = error_of(post(api_server, "v1/chat/completions", json=chat_body(content="hello " * 2000)), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "512" in str(error["message"])


def test_completions_specific_errors(api_server: ServerProcess) -> None:
    for body, param in [
        ({"model": MODEL, "prompt": ["a", "b"]}, "prompt"),
        ({"model": MODEL, "prompt": "a", "echo": "yes"}, "echo"),  # echo itself works (test_tools.py)
        ({"model": MODEL, "prompt": "a", "best_of": 3}, "best_of"),
        ({"model": MODEL}, "prompt"),
    ]:
        assert error_of(post(api_server, "v1/completions", json=body), 400)["param"] == param
    for body, param in [
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": MODEL, "input": "x", "dimensions": 3}, "dimensions"),
    ]:
        assert error_of(post(api_server, "v1/embeddings", json=body), 400)["param"] == param


def test_api_key_required_when_set(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", env={"MR_NOTEBOOK_API_KEY": "s3cret"})
    try:
        error = error_of(httpx.get(server.url + "v1/models", timeout=10), 401)
        assert error["code"] == "invalid_api_key"
        assert error_of(httpx.get(server.url + "health", headers={"Authorization": "Bearer nope"}), 401)
        ok = httpx.get(server.url + "v1/models", headers={"Authorization": "Bearer s3cret"}, timeout=10)
        assert ok.status_code == 200
        runtime = json.loads((tmp_path / "home" / "run" / "server.json").read_text())
        assert runtime["auth"] is True
    finally:
        server.stop()


def test_keyless_server_refuses_foreign_host_headers(api_server: ServerProcess) -> None:
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host header.
    error_of(httpx.get(api_server.url + "v1/models", headers={"Host": "evil.example"}, timeout=10), 403)
    assert httpx.get(api_server.url + "v1/models", headers={"Host": "localhost:1"}, timeout=10).status_code == 200


def test_non_loopback_bind_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MR_NOTEBOOK_API_KEY", raising=False)
    with pytest.raises(ServeError, match="API key"):
        serve(host="0.0.0.0", port=0)


def test_queue_full_is_503_with_retry_after(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    home = tmp_path / "home"
    add_long_model(Store(home), tiny_model_factory)
    # One sequence at a time (no batching), so that the second request waits in the queue.
    server = ServerProcess(home, env={"MR_NOTEBOOK_MAX_QUEUE": "1", "MR_NOTEBOOK_PARALLEL": "1"})
    streams = [StreamInThread(server.url, chat_body(LONG, stream=True)) for _ in range(2)]
    try:
        streams[0].start()
        assert streams[0].first_line.wait(60)
        streams[1].start()
        # The second request waits in the queue (limit 1): a third is refused.
        wait_until(lambda: any(row.get("queued") == 1 for row in server.ps()), message="a queued request")
        response = post(server, "v1/chat/completions", json=chat_body(LONG, max_tokens=2))
        error = error_of(response, 503)
        assert error["code"] == "queue_full" and response.headers["Retry-After"] == "1"
    finally:
        for stream in streams:
            stream.close()
        server.stop()
