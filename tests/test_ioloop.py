"""Nothing on the Jupyter server's IOLoop waits on the store's lock: a CLI holding it stalls no one else.

Another process (playing a long ``mr-notebook rm``) holds the store's index lock while a request that needs it
(loading a split model, whose part links are published under the lock; 40 tags) waits in a thread. Meanwhile /health,
Jupyter's own /api/status and a stream from an already loaded model must answer, and they must do so while the
lock is still held: the holder keeps it until the test lets go (or 30 s pass, the fallback when the loop is
blocked; then "released" is printed first and the test fails). No timing threshold: only the order of events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

# pytest-jupyter's fixtures, for this module only (see test_serverext.py).
from pytest_jupyter.jupyter_server import *  # noqa: F403
from test_api_support import MODEL, REPLY, chat_body, fill_store

from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import TinyModelFactory

SPLIT = "ai/split:latest"


@pytest.fixture
def home(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Path:
    store = fill_store(tmp_path / "mr_home", tiny_model_factory)
    store.import_gguf(tiny_model_factory(splits=3, reply="Split reply.", seed=4), SPLIT)
    return store.home


@pytest.fixture
def jp_server_config(home: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"mr_notebook": True}},
        "MrNotebook": {"home": str(home), "keep_alive": "2m"},
    }


@pytest.fixture
def server_url(jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


def test_a_held_index_lock_stalls_nothing_on_the_servers_loop(
    jp_serverapp: Any, server_url: str, home: Path, jp_asyncio_loop: Any
) -> None:
    token = str(jp_serverapp.identity_provider.token)
    api = server_url + "mr/"

    async def body() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(headers=headers, timeout=60) as client:
            loaded = await client.post(api + "engines/load", json={"model": MODEL})
            assert loaded.status_code == 200
            holder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mr_notebook.testing.lock_holder",
                str(home),
                "30",
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert holder.stdout is not None and holder.stdin is not None
            assert await holder.stdout.readline() == b"held\n"
            # Needs the lock: publishing the split model's part links waits in a thread until it is free.
            waiting = asyncio.create_task(client.post(api + "engines/load", json={"model": SPLIT}))
            # And more lock waiters than the default thread pool has threads (32 at most): tags of the model.
            tags = [
                asyncio.create_task(client.post(api + f"models/{MODEL}/tag", json={"target": f"me/t{i}"}))
                for i in range(40)
            ]
            await asyncio.sleep(0.5)  # let it reach the lock (if it blocked the loop, nothing below would run)
            health = await client.get(api + "health")
            status = await client.get(server_url + "api/status")
            streamed = ""
            request = chat_body(stream=True)
            async with client.stream("POST", api + "v1/chat/completions", json=request) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        choices = json.loads(line[6:])["choices"]
                        streamed += "".join(choice["delta"].get("content") or "" for choice in choices)
            # All three answered while the other process still holds the lock.
            assert holder.returncode is None and not waiting.done() and not any(t.done() for t in tags)
            assert health.json() == {"status": "ok"} and status.status_code == 200 and streamed == REPLY
            holder.stdin.write(b"go\n")
            await holder.stdin.drain()
            assert await holder.stdout.readline() == b"released\n"
            await holder.wait()
            split = await waiting
            assert {(await t).status_code for t in tags} == {201}
            assert split.status_code == 200 and split.json()["model"] == SPLIT
            answer = await client.post(api + "v1/chat/completions", json=chat_body(SPLIT))
            assert answer.json()["choices"][0]["message"]["content"] == "Split reply."
        assert Store(home).get(SPLIT).name == SPLIT

    jp_asyncio_loop.run_until_complete(body())
