"""One remote engine: its HTTP client, its models, its concurrency limit and its health.

Requests are OpenAI requests sent to the engine's ``/v1`` root with httpx (async), streamed back as they
arrive. A connect error is retried with bounded backoff, but only before the first byte: once an answer has
started, retrying would repeat text the client already has.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import ChainMap
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mr_notebook.engine.remote.config import EngineSpec
from mr_notebook.errors import RemoteEngineError, RemoteEngineTimeout

log = logging.getLogger(__name__)

#: Connect attempts before the first byte (delays 0.2 s, 0.4 s, 0.8 s between them).
CONNECT_ATTEMPTS = 4
_BACKOFF = 0.2
#: Bound on one SSE line and on a whole non-streamed answer read from an engine (an attacker may run it).
MAX_LINE = 4 * 1024 * 1024
MAX_BODY = 64 * 1024 * 1024
#: Models listed per engine (a hostile engine could list millions).
MAX_MODELS = 1000


def _error_message(response_text: str) -> str:
    """The engine's own error message (OpenAI's, Ollama's or plain text), shortened."""
    try:
        data = json.loads(response_text)
    except ValueError:
        return response_text.strip()[:500] or "no message"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) and isinstance(data, dict):
        error = data.get("message") or data.get("detail")
    return str(error)[:500] if error else response_text.strip()[:500]


class RemoteEngine:
    """Talks to one engine; lives as long as the Runner (its client is made on the serving loop)."""

    def __init__(self, spec: EngineSpec, keys: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        #: Keys the host took out of the environment (see RemoteEngines.hide_keys); else os.environ is read.
        self._keys = keys if keys is not None else {}
        self.models: list[str] = []
        self.models_at: float | None = None
        self.healthy: bool | None = None
        self.last_error: str | None = None
        #: Seconds to the first byte of the last answer (model lists and generations alike).
        self.latency: float | None = None
        self.requests = 0
        self.failures = 0
        self.in_flight = 0
        self.waiting = 0
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(self.spec.timeout, connect=10.0)
            # trust_env=False: no proxy or netrc from the environment decides where prompts go.
            self._client = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)
            self._slots = asyncio.Semaphore(self.spec.max_concurrency)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def status(self) -> dict[str, Any]:
        """Health and latency for status, ps and /metrics."""
        return {
            "name": self.name,
            "url": self.spec.url,
            "kind": self.spec.kind,
            "healthy": self.healthy,
            "latency": self.latency,
            "last_error": self.last_error,
            "models": len(self.models),
            "in_flight": self.in_flight,
            "waiting": self.waiting,
            "requests": self.requests,
            "failures": self.failures,
            "max_concurrency": self.spec.max_concurrency,
        }

    def _failed(self, message: str) -> None:
        self.healthy = False
        self.failures += 1
        self.last_error = message

    # ---------------------------------------------------------------- requests

    @asynccontextmanager
    async def _open(self, method: str, url: str, body: Any = None) -> AsyncIterator[httpx.Response]:
        """A 2xx answer, its body not read yet; errors become RemoteEngineError naming this engine."""
        client = self._http()
        assert self._slots is not None
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1
        self.requests += 1
        started = time.monotonic()
        try:
            response = await self._send(client, method, url, body)
            try:
                self.latency = time.monotonic() - started
                if response.status_code >= 300:  # redirects are not followed: a prompt goes where it was sent
                    text = (await response.aread())[:65536].decode("utf-8", "replace")
                    message = (
                        f"Engine {self.name} ({self.spec.url}) answered {response.status_code}: {_error_message(text)}"
                    )
                    if response.status_code >= 500:
                        self._failed(message)
                    raise RemoteEngineError(message, response.status_code)
                self.healthy, self.last_error = True, None
                yield response
            finally:
                await response.aclose()
        except httpx.TimeoutException:
            message = (
                f"Engine {self.name} ({self.spec.url}) sent nothing for {self.spec.timeout:g} s; it may be "
                f"overloaded. Retry, or raise its timeout (`mr-notebook engine add {self.name} URL --timeout S`)."
            )
            self._failed(message)
            raise RemoteEngineTimeout(message) from None
        except httpx.HTTPError as exc:
            message = (
                f"Engine {self.name} ({self.spec.url}) failed: {type(exc).__name__}: {str(exc) or 'connection lost'}. "
                "Check that it is running and reachable, then retry."
            )
            self._failed(message)
            raise RemoteEngineError(message) from None
        finally:
            self.in_flight -= 1
            self._slots.release()

    async def _send(self, client: httpx.AsyncClient, method: str, url: str, body: Any) -> httpx.Response:
        """Send with bounded retries of connect errors (nothing has reached the engine, so nothing repeats)."""
        headers = self.spec.headers(ChainMap(dict(self._keys), dict(os.environ)))
        for attempt in range(CONNECT_ATTEMPTS):
            request = client.build_request(method, url, json=body, headers=headers)
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise
                log.info("engine %s: connect failed, retry %d", self.name, attempt + 1)
                await asyncio.sleep(_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def get_json(self, url: str) -> Any:
        async with self._open("GET", url) as response:
            return self._decode(await self._read(response))

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        async with self._open("POST", f"{self.spec.api_root}/{path}", body) as response:
            return self._decode(await self._read(response))

    async def _read(self, response: httpx.Response) -> bytes:
        data = bytearray()
        async for part in response.aiter_bytes():
            data += part
            if len(data) > MAX_BODY:
                raise RemoteEngineError(f"Engine {self.name} sent an answer over {MAX_BODY} bytes; refused.")
        return bytes(data)

    def _decode(self, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError:
            raise RemoteEngineError(f"Engine {self.name} answered with something that is not JSON.") from None

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The JSON events of an OpenAI SSE answer, each as it arrives.

        Parsed here from ``data:`` lines (OpenAI streams use no other SSE field), which avoids a dependency.
        Closing this generator (client gone, task cancelled) closes the upstream request.
        """
        async with self._open("POST", f"{self.spec.api_root}/{path}", {**body, "stream": True}) as response:
            try:
                async for line in response.aiter_lines():
                    if len(line) > MAX_LINE:
                        raise RemoteEngineError(f"Engine {self.name} sent an event over {MAX_LINE} bytes; refused.")
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = self._decode(data.encode())
                    if isinstance(event, dict) and "error" in event:
                        message = _error_message(data)
                        raise RemoteEngineError(f"Engine {self.name} reported an error mid-answer: {message}")
                    if isinstance(event, dict):
                        yield event
            except httpx.TimeoutException:
                message = (
                    f"Engine {self.name} ({self.spec.url}) sent nothing for {self.spec.timeout:g} s mid-answer; "
                    "the answer is incomplete. Retry, or raise its timeout "
                    f"(`mr-notebook engine add {self.name} URL --timeout S`)."
                )
                self._failed(message)
                raise RemoteEngineTimeout(message) from None
            except httpx.HTTPError as exc:
                message = (
                    f"Engine {self.name} ({self.spec.url}) stopped mid-answer: {type(exc).__name__}: "
                    f"{str(exc) or 'connection lost'}. The answer is incomplete; retry once the engine is back."
                )
                self._failed(message)
                raise RemoteEngineError(message) from None

    # ---------------------------------------------------------------- models

    async def refresh(self) -> list[str]:
        """Ask the engine which models it serves (``/v1/models``, Ollama's ``/api/tags``, Model Runner's
        ``/models``), keep and return their ids."""
        if self.spec.kind == "ollama":
            data = await self.get_json(self.spec.url.removesuffix("/v1") + "/api/tags")
            items = data.get("models") if isinstance(data, dict) else None
            ids = [m.get("name") or m.get("model") for m in items or [] if isinstance(m, dict)]
        elif self.spec.kind == "model-runner":
            data = await self.get_json(self.spec.url.removesuffix("/v1").removesuffix("/engines") + "/models")
            rows = data if isinstance(data, list) else []
            ids = [t for m in rows if isinstance(m, dict) for t in m.get("tags") or []]
        else:
            data = await self.get_json(f"{self.spec.api_root}/models")
            items = data.get("data") if isinstance(data, dict) else None
            ids = [m.get("id") for m in items or [] if isinstance(m, dict)]
        clean = [i for i in ids if isinstance(i, str) and 0 < len(i) <= 256 and i.isprintable()]
        self.models = list(dict.fromkeys(clean))[:MAX_MODELS]
        self.models_at = time.time()
        return self.models
