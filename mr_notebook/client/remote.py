"""An engine reached over HTTP: the Jupyter server extension (``…/mr/``) or ``mr-notebook serve``.

It speaks the routes every client speaks (Docker Model Runner's ``/models`` and ``/engines`` routes, the
OpenAI routes under ``/v1``) with ``Authorization: Bearer TOKEN``, so a kernel shares the server's loaded
models with curl, the OpenAI SDK and other kernels, and never loads a model itself.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

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
    error_for_code,
)
from mr_notebook.errors import Cancelled, EngineUnavailable, MrNotebookError, PullError
from mr_notebook.store import Store

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
        store_home: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._url = url if url.endswith("/") else url + "/"
        self.token = token or None
        self.source = source
        self._store_home = store_home
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
        from mr_notebook.store.pull import PullProgress

        layers: dict[str, int] = {}
        message = ""
        result: dict[str, Any] = {}
        with self._stream("POST", "models/create", json={"from": ref}) as response:
            for line in response.iter_lines():
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"Pull of {ref} cancelled; pull again to resume.")
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = event.get("type")
                message = str(event.get("message", ""))
                if kind == "error":
                    error = event.get("error") or {}
                    raise error_for_code(error.get("code"), message or f"Pull of {ref} failed.", 502)
                if kind == "success":
                    result = event
                    break
                layer = event.get("layer") or {}
                digest = layer.get("id")
                if digest:
                    layers[str(digest)] = int(layer.get("current") or 0)
                if progress is not None:
                    progress(
                        PullProgress(
                            status=str(event.get("status") or ("downloading" if digest else "resolving")),
                            message=message,
                            digest=digest,
                            completed=int(layer.get("current") or 0),
                            total=int(layer.get("size") or 0),
                            overall_completed=int(event.get("pulled") or sum(layers.values())),
                            overall_total=int(event.get("total") or 0),
                        )
                    )
            else:
                raise PullError(
                    f"The engine at {self._url} ended the pull of {ref} without a result; pull again to resume."
                )
        model = result.get("model") or self.inspect(ref)
        return PullSummary(dict(model), message or f"Pulled {ref}.", bool(result.get("already_present")))

    def _local_store(self) -> Store:
        """The server's store on the shared disk (for verbs that move local files, not HTTP bytes)."""
        if self._store_home is None:
            status = self._request("GET", "engines/status")
            home = status.get("store") if isinstance(status, dict) else None
            self._store_home = str(home) if home else None
        return Store(self._store_home)

    def package(self, path: str, name: str) -> dict[str, Any]:
        # The file is on this machine's disk and so is the server's store: import it there directly.
        return self._local_store().import_gguf(path, name).to_json()

    def tag(self, source: str, target: str) -> dict[str, Any]:
        answer = self._request("POST", self._model_path(source) + "/tag", json={"target": target})
        model = answer.get("model") if isinstance(answer, dict) else None
        return dict(model) if isinstance(model, dict) else self.inspect(target)

    def rm(self, refs: Sequence[str], *, force: bool = False) -> Lines:
        done: Lines = []
        for ref in refs:
            answer = self._request("DELETE", self._model_path(ref), params={"force": "true"} if force else None)
            if isinstance(answer, list):
                done.extend(_line(item) for item in answer)
            elif isinstance(answer, dict) and isinstance(answer.get("deleted"), list):
                done.extend(str(item) for item in answer["deleted"])
            else:
                done.append(f"Untagged: {ref}")
        return done

    def prune(self) -> dict[str, int]:
        return self._local_store().prune()

    def purge(self) -> dict[str, int]:
        answer = self._request("DELETE", "models/purge")
        return {k: int(v) for k, v in answer.items()} if isinstance(answer, dict) else {}

    def df(self) -> dict[str, int]:
        answer = self._request("GET", "engines/df")
        return {k: int(v) for k, v in answer.items() if isinstance(v, int | float)}

    def configure(
        self,
        ref: str,
        *,
        context_size: int | None = None,
        keep_alive: float | None = None,
        threads: int | None = None,
        parallel: int | None = None,
    ) -> dict[str, Any]:
        given = {"context_size": context_size, "keep_alive": keep_alive, "threads": threads, "parallel": parallel}
        body: dict[str, Any] = {"model": ref, **{k: v for k, v in given.items() if v is not None}}
        self._request("POST", "engines/_configure", json=body)
        return self.inspect(ref)

    # ------------------------------------------------------------------ engine verbs
    def ps(self) -> Rows:
        return list(self._request("GET", "engines/ps"))

    def load(self, ref: str, *, keep_alive: float | None = None) -> dict[str, Any]:
        # The API has no blocking "load" route (``_configure`` preloads in the background and only logs a
        # failure), so a one-token chat loads the model and reports every load error with its real status.
        body: dict[str, Any] = {"model": ref, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive
        self._request("POST", "v1/chat/completions", json=body)
        entries = self.ps()
        wanted = self.inspect(ref).get("id")
        entry = next((e for e in entries if e.get("model") == ref), None) or next(
            (e for e in entries if e.get("id") == wanted), None
        )
        return dict(entry) if entry is not None else {"model": ref}

    def unload(self, refs: Sequence[str] | None = None) -> int:
        body: dict[str, Any] = {"all": True} if refs is None else {"models": list(refs)}
        answer = self._request("POST", "engines/unload", json=body)
        return int(answer.get("unloaded_runners", 0)) if isinstance(answer, dict) else 0

    def status(self) -> dict[str, Any]:
        answer = self._request("GET", "engines/status")
        status: dict[str, Any] = dict(answer) if isinstance(answer, dict) else {"status": answer}
        status.update({"mode": self.mode, "source": self.source, "url": self._url})
        status.setdefault("running", True)
        return status

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
            except BaseException as exc:  # handed to the consumer thread, which raises it
                fail(exc if isinstance(exc, MrNotebookError) else self._unreachable(exc))

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
            chunk = json.loads(data)
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


def _line(item: Any) -> str:
    """One line of a DELETE answer (Docker answers ``[{"Untagged": …}, {"Deleted": …}]``)."""
    if isinstance(item, Mapping):
        return ", ".join(f"{k}: {v}" for k, v in item.items())
    return str(item)
