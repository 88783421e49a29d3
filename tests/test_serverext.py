"""The Jupyter server extension, in a real Jupyter server (pytest-jupyter), with real workers.

The tests are synchronous and drive their coroutines on pytest-jupyter's loop (``jp_asyncio_loop``), the loop
the server listens on; pytest-asyncio would run them on a loop of its own, where the server never answers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

# pytest-jupyter's fixtures, for this module only: as a global plugin its autouse server cleanup would run
# around every test of the suite (20x slower for plain unit tests).
from pytest_jupyter.jupyter_server import *  # noqa: F403
from test_api_support import EMBED, LONG, MODEL, REPLY, fill_store, pid_alive, wait_until

from mr_notebook.api.base import ApiHandler
from mr_notebook.serverext import MrNotebook
from mr_notebook.testing.tiny_model import TinyModelFactory

# One request path per route (the catch-all included); every handler registered must be reached by one.
SAMPLE_PATHS = [
    "v1/chat/completions", "v1/completions", "v1/embeddings", "v1/models", "v1/models/ai/x",
    "engines/v1/models", "engines/llama.cpp/v1/chat/completions", f"engines/{MODEL}/v1/chat/completions",
    "models", "models/create", "models/purge", "models/prune", "models/load", "models/ai/x/tag", "models/ai/x",
    "engines/status", "engines/ps", "engines/df", "engines/load", "engines/unload", "engines/_configure",
    "health", "metrics", "", "no/such/route",
    # Ollama, Anthropic and llama-server routes (H-protocols)
    "api/version", "api/tags", "api/show", "api/chat", "api/generate", "api/embed", "api/embeddings", "api/ps",
    "api/pull", "api/delete", "api/copy", "v1/messages", "anthropic/v1/messages/count_tokens", "tokenize",
    "detokenize", "openapi.json",
]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@pytest.fixture
def home(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Path:
    fill_store(tmp_path / "mr_home", tiny_model_factory)
    return tmp_path / "mr_home"


@pytest.fixture
def jp_server_config(home: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"mr_notebook": True}},
        "MrNotebook": {"home": str(home), "max_body_size": 100_000, "keep_alive": "2m", "max_queue": 5},
    }


@pytest.fixture
def api_url(jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The extension's root; ``http_server`` makes the server listen (on pytest-jupyter's loop)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}mr/"


@pytest.fixture
def token(jp_serverapp: Any) -> str:
    return str(jp_serverapp.identity_provider.token)


def extension(serverapp: Any) -> MrNotebook:
    (app,) = serverapp.extension_manager.extension_apps["mr_notebook"]
    assert isinstance(app, MrNotebook)
    return app


def registered_api_rules(serverapp: Any) -> list[tuple[re.Pattern[str], type]]:
    """Every (path regex, handler class) of ours in the server's routing table."""
    found: list[tuple[re.Pattern[str], type]] = []

    def walk(router: Any) -> None:
        for rule in getattr(router, "rules", []):
            target = rule.target
            if isinstance(target, type) and issubclass(target, ApiHandler):
                found.append((rule.matcher.regex, target))
            else:
                walk(target)

    walk(serverapp.web_app.default_router)
    walk(serverapp.web_app.wildcard_router)
    return found


def test_environment_for_kernels(jp_serverapp: Any, jp_http_port: int, token: str) -> None:
    assert os.environ["MR_NOTEBOOK_URL"] == f"http://localhost:{jp_http_port}/a%40b/mr/"
    assert os.environ["MR_NOTEBOOK_TOKEN"] == token


def test_every_route_and_method_refuses_without_a_token(jp_serverapp: Any, api_url: str, jp_asyncio_loop: Any) -> None:
    async def body() -> None:
        rules = registered_api_rules(jp_serverapp)
        assert len(rules) >= 19
        prefix = jp_serverapp.base_url + "mr/"
        for handler in {h for _, h in rules}:  # a handler has one rule per path template
            reached = any(r.match(prefix + path) for r, h in rules if h is handler for path in SAMPLE_PATHS)
            assert reached, f"no sample path reaches {handler}"
        async with httpx.AsyncClient(timeout=30) as client:
            for path in SAMPLE_PATHS:
                for method in METHODS:
                    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "token wrong"}):
                        response = await client.request(method, api_url + path, headers=headers, content=b"{}")
                        assert response.status_code == 403, (method, path, response.status_code)
                        assert response.headers["content-type"].startswith("application/json")
                        error = response.json()["error"]
                        if path == "" or path.startswith("api/"):  # Ollama's error shape
                            assert isinstance(error, str) and error
                        elif "messages" in path:  # Anthropic's
                            assert error["type"] == "permission_error"
                        else:
                            assert error["code"] == "invalid_api_key"

    jp_asyncio_loop.run_until_complete(body())


def test_bearer_and_token_headers_work_without_xsrf(api_url: str, token: str, jp_asyncio_loop: Any) -> None:
    async def body() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            for scheme in ("Bearer", "token"):
                health = await client.get(api_url + "health", headers={"Authorization": f"{scheme} {token}"})
                assert health.json() == {"status": "ok"}
            # A token-authenticated POST needs no _xsrf cookie.
            answer = await client.post(
                api_url + f"engines/{MODEL}/v1/chat/completions",
                headers={"Authorization": f"Bearer {token}"},
                json={"messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == REPLY
            status = (await client.get(api_url + "engines/status", headers={"Authorization": f"Bearer {token}"})).json()
            assert status["mode"] == "jupyter"

    jp_asyncio_loop.run_until_complete(body())


def test_openai_sdk_through_jupyter(api_url: str, token: str, jp_asyncio_loop: Any) -> None:
    async def body() -> None:
        client = openai.AsyncOpenAI(base_url=api_url + "v1", api_key=token, max_retries=0, timeout=60)
        async with client:
            answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == REPLY
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
            )
            chunks = [chunk async for chunk in stream]
            assert chunks[0].choices[0].delta.role == "assistant"
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
            vectors = await client.embeddings.create(model=EMBED, input=["a", "b"])
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
            assert MODEL in {m.id async for m in client.models.list()}
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="ai/absent", messages=[{"role": "user", "content": "x"}])
        wrong = openai.AsyncOpenAI(base_url=api_url + "v1", api_key="not-the-token", max_retries=0)
        async with wrong:
            with pytest.raises(openai.PermissionDeniedError):
                await wrong.models.list()

    jp_asyncio_loop.run_until_complete(body())


def test_errors_are_openai_json_under_jupyter(api_url: str, token: str, jp_asyncio_loop: Any) -> None:
    async def body() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            missing = await client.get(api_url + "no/such/route")
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            too_big = await client.post(api_url + "v1/chat/completions", content=b"x" * 200_000)
            assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
            json_type = {"Content-Type": "application/json"}
            bad = await client.post(api_url + "v1/chat/completions", content=b"{oops", headers=json_type)
            assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
            metrics = await client.get(api_url + "metrics")
            assert (
                metrics.headers["content-type"].startswith("text/plain")
                and "mr_notebook_requests_total" in metrics.text
            )

    jp_asyncio_loop.run_until_complete(body())


def test_traits_configure_the_engine(jp_serverapp: Any, home: Path) -> None:
    app = extension(jp_serverapp)
    settings = app.engine_settings()
    assert (settings.keep_alive, settings.max_queue) == (120.0, 5)
    assert app.max_body_size == 100_000 and Path(app.home) == home


def test_server_shutdown_ends_workers(jp_serverapp: Any, api_url: str, token: str, jp_asyncio_loop: Any) -> None:
    async def body() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            for model in (MODEL, LONG):
                body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
                assert (await client.post(api_url + "v1/chat/completions", json=body)).status_code == 200
            pids = [row["pid"] for row in (await client.get(api_url + "engines/ps")).json()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        await jp_serverapp.cleanup_extensions()  # what the server runs on shutdown
        wait_until(lambda: not any(pid_alive(p) for p in pids), message="the workers to end")

    jp_asyncio_loop.run_until_complete(body())


def test_extension_is_enabled_on_install() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"], capture_output=True, text=True, timeout=120
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert re.search(r"mr_notebook\s+enabled", output), output
    assert re.search(r"mr_notebook [\d.]+ OK", output), output
