"""An engine reached over HTTP: the Jupyter server extension (``…/mr/``) or ``mr-notebook serve``.

It speaks the routes every client speaks (Docker Model Runner's ``/models`` and ``/engines`` routes, the
OpenAI routes under ``/v1``) with ``Authorization: Bearer TOKEN``, so a kernel shares the server's loaded
models with curl, the OpenAI SDK and other kernels, and never loads a model itself.
"""

from __future__ import annotations

import functools
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from mr_notebook.client.base import (
    ChatStream,
    Choices,
    Lines,
    Messages,
    ProgressCallback,
    PullSummary,
    Rows,
    Streams,
    Vectors,
)
from mr_notebook.errors import Cancelled, EngineUnavailable, LocalFileNotFound, MrNotebookError, error_for_code
from mr_notebook.hosts import is_loopback

log = logging.getLogger(__name__)

#: Loading a big model can take minutes before the first byte of an answer.
_READ_TIMEOUT = 600.0


class RemoteEngine:
    """HTTP client of one engine endpoint root (``url`` ends with "/")."""

    mode = "remote"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        source: str = "MR_NOTEBOOK_URL",
        timeout: float = 10.0,
    ) -> None:
        self._url = url if url.endswith("/") else url + "/"
        self.token = token or None
        self.source = source
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self._url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=_READ_TIMEOUT),
        )

    def __repr__(self) -> str:
        return f"<RemoteEngine url={self._url!r} source={self.source!r}>"

    @property
    def url(self) -> str:
        return self._url

    def endpoint(self) -> tuple[str, str]:
        return self._url + "v1", self.token or "not-needed"

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------------ transport
    def _unreachable(self, exc: BaseException) -> EngineUnavailable:
        return EngineUnavailable(
            f"Cannot reach the model engine at {self._url} (found through {self.source}): {exc}. "
            "Is the server still running? Restart it, or unset MR_NOTEBOOK_URL to run models in the kernel."
        )

    def _error(self, response: httpx.Response) -> MrNotebookError:
        try:
            payload = response.json()
        except ValueError:
            payload = None
        error = payload.get("error") if isinstance(payload, dict) else None
        if response.status_code in (401, 403):
            return EngineUnavailable(
                f"The engine at {self._url} refused our credentials (HTTP {response.status_code}). "
                "Kernels started by Jupyter get MR_NOTEBOOK_TOKEN from the server; for `mr-notebook serve "
                "--api-key`, set MR_NOTEBOOK_API_KEY (or MR_NOTEBOOK_TOKEN) in the kernel's environment."
            )
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error_for_code(error.get("code"), error["message"], response.status_code, error.get("param"))
        return EngineUnavailable(
            f"The engine at {self._url} answered HTTP {response.status_code} to {response.request.url.path}: "
            f"{response.text[:200]!r}."
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise self._error(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    @contextmanager
    def _stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._error(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    @staticmethod
    def _model_path(ref: str) -> str:
        return "models/" + quote(ref.strip(), safe="/:@")

    # ------------------------------------------------------------------ store verbs
    def list(self) -> Rows:
        return list(self._request("GET", "models"))

    def inspect(self, ref: str) -> dict[str, Any]:
        return dict(self._request("GET", self._model_path(ref)))

    def pull(
        self, ref: str, progress: ProgressCallback | None = None, *, cancel: threading.Event | None = None
    ) -> PullSummary:
        done = self._ndjson("POST", "models/create", f"pull of {ref}", progress, cancel, json={"from": ref})
        model = done.get("model")
        return PullSummary(
            dict(model) if isinstance(model, dict) else self.inspect(ref),
            bool(done.get("already_present")),
            int(done.get("downloaded") or 0),
        )

    def package(self, path: str, name: str, *, link: bool = True) -> dict[str, Any]:
        """Add a GGUF file of this machine: a server on this machine hard-links it from its path (no bytes sent);
        any other server receives the bytes (``POST /models/load``), hashed on the way. The client never opens
        the server's store."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise LocalFileNotFound(f"No file at {path}: give the path of a .gguf file on this machine.")
        if link and is_loopback(urlsplit(self._url).hostname or ""):
            try:
                answer = self._request("POST", "models/load", json={"name": name, "path": str(file.resolve())})
                return dict(answer["model"])
            except LocalFileNotFound:
                log.info("the server at %s cannot read %s (another filesystem): sending the bytes", self._url, file)
        with file.open("rb") as stream:
            answer = self._request(
                "POST",
                "models/load",
                params={"name": name},
                content=iter(functools.partial(stream.read, 1 << 20), b""),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(file.stat().st_size)},
            )
        return dict(answer["model"])

    def tag(self, source: str, target: str) -> dict[str, Any]:
        answer = self._request("POST", self._model_path(source) + "/tag", json={"target": target})
        return dict(answer["model"])

    def rm(self, refs: Sequence[str], *, force: bool = False) -> Rows:
        done: Rows = []
        for ref in refs:  # Docker's DELETE names one model
            done += self._request("DELETE", self._model_path(ref), params={"force": "true"} if force else None)
        return done

    def prune(self) -> dict[str, int]:
        return dict(self._request("POST", "models/prune"))

    def purge(self, *, force: bool = False) -> dict[str, int]:
        return dict(self._request("DELETE", "models/purge", params={"force": "true"} if force else None))

    def df(self) -> dict[str, int]:
        return dict(self._request("GET", "engines/df"))

    def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | str | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        given = {"context_size": context_size, "keep_alive": keep_alive, "threads": threads, "parallel": parallel}
        body: dict[str, Any] = {"model": ref, **{k: v for k, v in given.items() if v is not None}}
        answer = dict(self._request("POST", "engines/_configure", json=body))
        answer.pop("status", None)  # the route's word for what happened; the lists say it
        return answer

    # ------------------------------------------------------------------ engine verbs
    def ps(self) -> Rows:
        return list(self._request("GET", "engines/ps"))

    def load(
        self, ref: str, *, keep_alive: float | str | None = None, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": ref, **({"keep_alive": keep_alive} if keep_alive is not None else {})}
        if progress is None:
            return dict(self._request("POST", "engines/load", json=body))
        done = self._ndjson("POST", "engines/load", f"load of {ref}", progress, None, json={**body, "stream": True})
        return dict(done["model"])

    def unload(self, refs: Sequence[str] | None = None) -> int:
        body: dict[str, Any] = {"all": True} if refs is None else {"models": list(refs)}
        answer = self._request("POST", "engines/unload", json=body)
        return int(answer.get("unloaded_runners", 0))

    def status(self) -> dict[str, Any]:
        status = dict(self._request("GET", "engines/status"))
        loaded = status.get("loaded_models", 0)
        serving = status.get("mode")
        status.update({"serving": serving, "mode": self.mode, "source": self.source, "url": self._url})
        status.update({"running": True, "loaded": loaded})
        return status

    def _ndjson(
        self,
        method: str,
        path: str,
        what: str,
        progress: ProgressCallback | None,
        cancel: threading.Event | None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Read an NDJSON answer of progress lines to its ``success`` line (returned); an ``error`` line raises."""
        from mr_notebook.store.pull import PullProgress

        with self._stream(method, path, **kwargs) as response:
            for line in response.iter_lines():
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"The {what} was cancelled; ask again to resume.")
                if not line.strip():
                    continue
                event = self._json_line(line, what)
                kind = event.get("type")
                if kind == "error":
                    error: dict[str, Any] = event["error"] if isinstance(event.get("error"), dict) else {}
                    message = str(error.get("message") or event.get("message") or f"The {what} failed.")
                    raise error_for_code(error.get("code"), message, 502, error.get("param"))
                if kind == "success":
                    return event
                layer: dict[str, Any] = event["layer"] if isinstance(event.get("layer"), dict) else {}
                if progress is not None:
                    progress(
                        PullProgress(
                            status=str(event.get("status") or ""),
                            message=str(event.get("message") or ""),
                            digest=layer.get("id"),
                            completed=int(layer.get("current") or 0),
                            total=int(layer.get("size") or 0),
                            overall_completed=int(event.get("pulled") or 0),
                            overall_total=int(event.get("total") or 0),
                        )
                    )
        raise EngineUnavailable(f"The engine at {self._url} ended the {what} without a result; ask again.")

    def _json_line(self, line: str, what: str) -> dict[str, Any]:
        try:
            data = json.loads(line)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineUnavailable(
                f"The engine at {self._url} answered the {what} with a line that is not JSON ({line[:80]!r}); "
                "is MR_NOTEBOOK_URL the root of an mr-notebook endpoint?"
            )
        return data

    def chat_stream(self, model: str, messages: Messages, **params: Any) -> ChatStream:
        stream = ChatStream(model)

        def read(response: httpx.Response) -> None:
            if not stream.closed:
                self._read_sse(response, stream)

        def fail(exc: BaseException) -> None:
            if not stream.closed:
                stream._fail(exc)

        stream._set_canceller(self._post_stream(model, messages, params, read, fail))
        return stream

    def chat_choices(self, model: str, messages: Messages, n: int, **params: Any) -> Streams:
        choices = Choices(model, n)

        def read(response: httpx.Response) -> None:
            if not choices.closed:
                self._read_sse(response, choices)

        def fail(exc: BaseException) -> None:
            if not choices.closed:
                choices.fail(exc)

        choices.set_canceller(self._post_stream(model, messages, {**params, "n": n}, read, fail))
        return choices.streams

    def _post_stream(
        self,
        model: str,
        messages: Messages,
        params: dict[str, Any],
        read: Callable[[httpx.Response], None],
        fail: Callable[[BaseException], None],
    ) -> Callable[[], None]:
        """Start a streamed chat completion in a thread; returns what cancels it."""
        body = {
            **params,
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        held: dict[str, socket.socket] = {}

        def cancel() -> None:
            # Shutting the socket down wakes the reading thread at once, even while the server is silent
            # (loading, queued); the server sees the disconnect and cancels the generation.
            sock = held.get("socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        def produce() -> None:
            try:
                with self._stream("POST", "v1/chat/completions", json=body) as response:
                    network = response.extensions.get("network_stream")
                    sock = network.get_extra_info("socket") if network is not None else None
                    if isinstance(sock, socket.socket):
                        held["socket"] = sock
                    try:
                        read(response)
                    finally:
                        # The connection may go back to the pool now: a later close() must not touch it.
                        held.pop("socket", None)
            except Exception as exc:  # handed to the consumer thread, which raises it as it is
                fail(exc)  # transport errors are already EngineUnavailable (_stream); others are bugs to see

        threading.Thread(target=produce, name=f"mr-notebook-chat-{model}", daemon=True).start()
        return cancel

    def _read_sse(self, response: httpx.Response, sink: ChatStream | Choices) -> None:
        """Server-sent events into one stream, or into ``n`` choices by ``choices[].index``."""
        finish_reason: str | None = None
        usage: dict[str, int] | None = None
        for line in response.iter_lines():
            if sink.closed:
                return
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = self._json_line(data, "chat stream")
            if "error" in chunk:
                error = chunk["error"]
                raise error_for_code(error.get("code"), str(error.get("message")), 500, error.get("param"))
            if chunk.get("usage"):
                usage = {k: int(v) for k, v in chunk["usage"].items() if isinstance(v, int)}
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                text, reasoning = delta.get("content"), delta.get("reasoning_content")
                reasoning = reasoning if isinstance(reasoning, str) else ""
                logprobs = (choice.get("logprobs") or {}).get("content")
                index = int(choice.get("index") or 0)
                if isinstance(sink, Choices):
                    if text or logprobs or reasoning:
                        sink.emit(index, text or "", logprobs, reasoning)
                    sink.choice_done(index, choice.get("finish_reason"))
                    continue
                if text or logprobs or reasoning:
                    sink._emit(text or "", logprobs, reasoning)
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
        if isinstance(sink, Choices):
            sink.finish(usage)
        else:
            sink._finish(finish_reason, usage)

    def embed(self, model: str, inputs: Lines) -> Vectors:
        answer = self._request("POST", "v1/embeddings", json={"model": model, "input": inputs})
        rows = sorted(answer["data"], key=lambda item: item.get("index", 0))
        return [list(row["embedding"]) for row in rows]
