"""The extension under a real Jupyter server: cookie logins need _xsrf, oversized bodies are refused early.

Coroutines run on pytest-jupyter's loop (``jp_asyncio_loop``), the loop the server listens on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

# pytest-jupyter's fixtures for this module only (see test_serverext.py).
from pytest_jupyter.jupyter_server import *  # noqa: F403
from test_api_support import MODEL, fill_store

from mr_notebook.testing.tiny_model import TinyModelFactory

LIMIT = 100_000


@pytest.fixture
def home(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Path:
    fill_store(tmp_path / "mr_home", tiny_model_factory)
    return tmp_path / "mr_home"


@pytest.fixture
def jp_server_config(home: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"mr_notebook": True}},
        "MrNotebook": {"home": str(home), "max_body_size": LIMIT},
    }


@pytest.fixture
def server_root(jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


def test_cookie_authenticated_post_without_xsrf_is_refused(
    jp_serverapp: Any, server_root: str, jp_asyncio_loop: Any
) -> None:
    token = str(jp_serverapp.identity_provider.token)
    chat = f"mr/engines/{MODEL}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def run() -> None:
        async with httpx.AsyncClient(timeout=60, follow_redirects=False) as browser:
            # Log in the way a person does: the login form with the token as password.
            form = await browser.get(server_root + "login")
            xsrf = browser.cookies.get("_xsrf")
            assert form.status_code == 200 and xsrf
            login = await browser.post(server_root + "login", data={"password": token, "_xsrf": xsrf})
            assert login.status_code in (302, 303), login.text
            assert any(name.startswith("username-") for name in browser.cookies), browser.cookies
            # The cookie alone authenticates reads ...
            assert (await browser.get(server_root + "mr/engines/status")).status_code == 200
            # ... but a POST with only the cookie (what a cross-site form could send) is refused.
            refused = await browser.post(server_root + chat, json=body)
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"]["type"] == "invalid_request_error"
            assert "_xsrf" in refused.json()["error"]["message"] or "XSRF" in refused.json()["error"]["message"]
            # With the _xsrf header (which only same-origin script can read from the cookie) it works.
            allowed = await browser.post(server_root + chat, json=body, headers={"X-XSRFToken": xsrf})
            assert allowed.status_code == 200, allowed.text

    jp_asyncio_loop.run_until_complete(run())


def test_oversized_body_is_refused_from_content_length(
    jp_serverapp: Any, server_root: str, jp_http_port: int, jp_base_url: str, jp_asyncio_loop: Any
) -> None:
    token = str(jp_serverapp.identity_provider.token)

    async def head_of(extra_headers: str) -> bytes:
        """The status line and headers answered to a POST that announces 50 MB and sends nothing."""
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(
            (
                f"POST {jp_base_url}mr/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                f"{extra_headers}Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
        finally:
            writer.close()

    async def run() -> None:
        # 50 MB is under Jupyter's own 512 MB cap: the 413 must come from the headers, before any body.
        head = await head_of(f"Authorization: Bearer {token}\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        # An unauthenticated one is refused before its size matters.
        head = await head_of("")
        assert re.match(rb"HTTP/1.1 403", head), head
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            assert (await client.get(server_root + "mr/health")).json() == {"status": "ok"}

    jp_asyncio_loop.run_until_complete(run())


def test_openapi_document_under_jupyter(
    jp_serverapp: Any, server_root: str, jp_asyncio_loop: Any, jp_http_port: int, jp_base_url: str
) -> None:
    token = str(jp_serverapp.identity_provider.token)

    async def run() -> None:
        async with httpx.AsyncClient(timeout=30) as anonymous:
            refused = await anonymous.get(server_root + "mr/openapi.json")
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            doc = (await client.get(server_root + "mr/openapi.json")).json()
        assert refused.status_code == 403
        assert doc["servers"] == [{"url": f"http://127.0.0.1:{jp_http_port}{jp_base_url}mr"}]
        assert {"/v1/chat/completions", "/engines/{model}/v1/embeddings", "/models/{ref}/tag"} <= set(doc["paths"])

    jp_asyncio_loop.run_until_complete(run())


def test_chunked_large_body_is_cut_at_the_limit(
    jp_serverapp: Any, server_root: str, jp_http_port: int, jp_base_url: str, jp_asyncio_loop: Any
) -> None:
    """No Content-Length to refuse from: the server stops reading at max_body_size instead of buffering it all."""
    token = str(jp_serverapp.identity_provider.token)

    async def run() -> int:
        _reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        writer.write(
            (
                f"POST {jp_base_url}mr/v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{jp_http_port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"x" * 65536
        sent = 0
        try:
            for _ in range(512):  # 32 MiB against a 100 kB limit
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.wait_for(writer.drain(), 15)
                sent += len(chunk)
        except (ConnectionError, OSError):
            return sent
        finally:
            writer.close()
        return sent

    sent = jp_asyncio_loop.run_until_complete(run())
    assert sent < 16 * 1024 * 1024, f"the server read {sent} bytes of a body over its {LIMIT}-byte limit"

    async def healthy() -> None:
        async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
            assert (await client.get(server_root + "mr/health")).json() == {"status": "ok"}

    jp_asyncio_loop.run_until_complete(healthy())
