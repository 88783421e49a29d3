"""Remote engines under the Jupyter server extension: ``c.MrNotebook.engines``, and the engine's key kept out
of the environment kernels inherit (pytest-jupyter; the remote is llama-cpp-python's own OpenAI server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

# pytest-jupyter's fixtures for this module only (see test_serverext.py).
from pytest_jupyter.jupyter_server import *  # noqa: F403
from test_remote_engines import HI, KEY, LlamaCppServer

from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[LlamaCppServer]:
    server = LlamaCppServer(tiny_model_factory(), tmp_path_factory.mktemp("box") / "log", api_key=KEY).start()
    yield server
    server.kill()


@pytest.fixture
def jp_server_config(tmp_path: Path, box: LlamaCppServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("JUPYTER_BOX_KEY", KEY)  # in the server's environment as it starts
    return {
        "ServerApp": {"jpserver_extensions": {"mr_notebook": True}},
        "MrNotebook": {
            "home": str(tmp_path / "mr_home"),
            "engines": [{"name": "box", "url": box.url, "api_key_env": "JUPYTER_BOX_KEY"}],
        },
    }


def test_configured_engine_serves_and_its_key_stays_in_the_server(
    jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str, jp_asyncio_loop: Any
) -> None:
    # Kernels are started with a copy of this environment: the key is no longer in it.
    assert "JUPYTER_BOX_KEY" not in os.environ
    api_url = f"http://127.0.0.1:{jp_http_port}{jp_base_url}mr/"
    token = str(jp_serverapp.identity_provider.token)

    async def body() -> None:
        client = openai.AsyncOpenAI(base_url=api_url + "v1", api_key=token, max_retries=0, timeout=60)
        async with client:
            # The server still has the key: the remote (which requires it) answers.
            answer = await client.chat.completions.create(model="box/tiny", messages=HI)  # type: ignore[arg-type]
            assert answer.choices[0].message.content == DEFAULT_REPLY
            assert "box/tiny" in {m.id async for m in client.models.list()}

    jp_asyncio_loop.run_until_complete(body())
