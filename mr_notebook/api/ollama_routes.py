"""Ollama's generation API under ``/api``: chat, generate, embed (and the legacy embeddings route).

What Ollama clients (the ``ollama`` library, Open WebUI, Continue, LangChain's ChatOllama) expect: NDJSON
streams, durations in nanoseconds, RFC 3339 times, ``options`` for sampling, ``format`` as a grammar, errors
as ``{"error": "…"}`` (inside a stream: one such line). Each request becomes an OpenAI chat body and runs
through :func:`mr_notebook.api.turns.run_turn`, like every other protocol.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.base import ApiHandler
from mr_notebook.api.ollama_requests import chat_messages, keep_alive_seconds, num_ctx, openai_body
from mr_notebook.api.tool_choice import parse_tools
from mr_notebook.api.turns import (
    Timing,
    TurnRequest,
    close_stream,
    engine_params,
    fill_in_the_middle,
    metric_label,
    model_traits,
    run_turn,
    template_messages,
    write_family_error,
)
from mr_notebook.engine import Chunk
from mr_notebook.errors import InvalidRequest, MrNotebookError

#: The Ollama API version we speak (clients such as Open WebUI check it).
OLLAMA_VERSION = "0.12.0"


def rfc3339(timestamp: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, tz=timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def ns(seconds: float) -> int:
    return max(int(seconds * 1e9), 0)


class OllamaHandler(ApiHandler):
    """Ollama's error shape: ``{"error": "message"}`` with the HTTP status."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        write_family_error(self, status_code, kwargs, lambda status, message: {"error": message})

    def model_name(self, body: dict[str, Any]) -> str:
        """Ollama sends ``model`` (older clients ``name``); our references and their short forms both work."""
        name = body.get("model", body.get("name"))
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest('model is required: send {"model": "ai/smollm2", …}.', "model")
        return name

    async def line(self, data: dict[str, Any]) -> None:
        if not self._headers_written:
            self.start_stream("application/x-ndjson")
        self.write(json.dumps(data, ensure_ascii=False) + "\n")
        await self.flush()

    async def stream_error(self, exc: MrNotebookError) -> None:
        try:
            await self.line({"error": str(exc)})
        except StreamClosedError:
            self.mark_client_gone()


def _done_reason(finish: str | None) -> str:
    return "length" if finish == "length" else "stop"


class _OllamaGeneration(OllamaHandler):
    """Shared by chat and generate: load/unload requests, the turn, NDJSON or one JSON answer."""

    #: The field the text goes in: ``message`` (chat) or ``response`` (generate).
    chat = True
    #: Seconds this request spent loading the model (Ollama's load_duration).
    load_seconds = 0.0

    def envelope(self, model: str, **fields: Any) -> dict[str, Any]:
        return {"model": model, "created_at": rfc3339(), **fields}

    def text_fields(
        self, content: str, thinking: str = "", calls: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            return {"message": message}
        fields: dict[str, Any] = {"response": content}
        if thinking:
            fields["thinking"] = thinking
        return fields

    async def load_or_unload(self, model: str, body: dict[str, Any]) -> None:
        """An empty request loads the model; with ``keep_alive`` 0 it unloads it (Ollama's convention)."""
        runner = await self.ctx.ready_runner()
        seconds = keep_alive_seconds(body)
        if runner.remote.resolve(model) is not None:
            # A remote engine's model (issue 15): that engine decides what stays in its memory; nothing to do here.
            reason = "unload" if seconds == 0 else "load"
            self.write_json(self.envelope(model, **self.text_fields(""), done=True, done_reason=reason))
            return
        if seconds == 0:
            await asyncio.to_thread(self.ctx.store.get, model)  # an unknown name is still a 404
            await runner.unload([model])
            reason = "unload"
        else:
            await runner.load(model, keep_alive=seconds, context_size=num_ctx(body))
            reason = "load"
        self.write_json(self.envelope(model, **self.text_fields(""), done=True, done_reason=reason))

    async def answer(self, model: str, stream: AsyncIterator[Chunk], turn: TurnRequest, streaming: bool) -> None:
        traits = await model_traits(self.ctx, self.settings, model)
        timing = Timing(started=self.started_at)
        content: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        try:
            async for event in run_turn(stream, turn, traits, timing):
                if event.kind == "call" and event.call is not None:
                    call = {
                        "function": {"index": len(calls), "name": event.call.name, "arguments": event.call.arguments}
                    }
                    calls.append(call)
                    if streaming:
                        await self.line(self.envelope(model, **self.text_fields("", calls=[call]), done=False))
                elif event.kind in ("content", "reasoning"):
                    if streaming:
                        fields = self.text_fields(*((event.text, "") if event.kind == "content" else ("", event.text)))
                        await self.line(self.envelope(model, **fields, done=False))
                    else:
                        (content if event.kind == "content" else thinking).append(event.text)
                elif event.kind == "done":
                    usage = event.usage
                    first = timing.first or time.perf_counter()
                    stats = {
                        "done": True,
                        "done_reason": _done_reason(event.finish_reason),
                        "total_duration": ns(time.perf_counter() - self.started_at),
                        "load_duration": ns(self.load_seconds),
                        "prompt_eval_count": usage.prompt_tokens if usage else 0,
                        "prompt_eval_duration": ns(first - self.started_at - self.load_seconds),
                        "eval_count": usage.completion_tokens if usage else 0,
                        "eval_duration": ns((timing.last or first) - first),
                    }
                    if streaming:
                        await self.line(self.envelope(model, **self.text_fields(""), **stats))
                    else:
                        fields = self.text_fields("".join(content), "".join(thinking), calls)
                        self.write_json(self.envelope(model, **fields, **stats))
                    if usage and not self.client_gone:
                        self.ctx.metrics.generation(
                            metric_label(model),
                            prompt_tokens=usage.prompt_tokens,
                            completion_tokens=usage.completion_tokens,
                            ttft=first - self.started_at,
                            duration=(timing.last or first) - first,
                        )
        except StreamClosedError:
            self.mark_client_gone()
        except MrNotebookError as exc:
            if not self._headers_written:
                raise  # before the first line: a real HTTP status
            await self.stream_error(exc)
        finally:
            await close_stream(stream)

    async def load_first(self, model: str, keep_alive: float | None, context_size: int | None) -> None:
        """Load the model apart from generating when it is not loaded yet, so load_duration is measured.

        With ``context_size`` (``options.num_ctx``) a model loaded with another context is reloaded.
        """
        runner = await self.ctx.ready_runner()
        if runner.remote.resolve(model) is not None:
            return  # a remote engine's model (issue 15): that engine loads it
        record = await asyncio.to_thread(self.ctx.store.get, model)
        if context_size is None and any(status.id == record.id for status in runner.ps()):
            return
        started = time.perf_counter()
        # keep_alive 0 applies when this request ends; loading with it would unload the model at once.
        await runner.load(model, keep_alive=None if keep_alive == 0 else keep_alive, context_size=context_size)
        self.load_seconds = time.perf_counter() - started

    def streaming(self, body: dict[str, Any]) -> bool:
        value = body.get("stream", True)  # Ollama streams unless told not to
        if not isinstance(value, bool):
            raise InvalidRequest("stream must be true or false.", "stream")
        return value


class ChatHandler(_OllamaGeneration):
    """``POST /api/chat``."""

    route_name = "ollama_chat"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model = self.model_name(body)
        messages = body.get("messages")
        if not messages:
            await self.load_or_unload(model, body)
            return
        converted = chat_messages(messages)
        openai = openai_body(body, converted)
        tools = parse_tools(body.get("tools"))
        think = body.get("think")
        turn = TurnRequest(
            model, openai, tools, "auto" if tools else "none", reasoning="drop" if think is False else "split"
        )
        params = engine_params(self.ctx, turn, await model_traits(self.ctx, self.settings, model))
        await self.load_first(model, params.keep_alive, num_ctx(body))
        runner = await self.ctx.ready_runner()
        stream = runner.chat(model, template_messages(converted), params)
        await self.run_cancellable(self.answer(model, stream, turn, self.streaming(body)))


class GenerateHandler(_OllamaGeneration):
    """``POST /api/generate``: a prompt through the chat template (``raw``: as is; ``suffix``: fill the middle)."""

    route_name = "ollama_generate"
    chat = False

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model = self.model_name(body)
        prompt, suffix, system = body.get("prompt") or "", body.get("suffix") or "", body.get("system")
        for key, value in (("prompt", prompt), ("suffix", suffix)):
            if not isinstance(value, str):
                raise InvalidRequest(f"{key} must be a string.", key)
        if body.get("images"):
            raise InvalidRequest("images are not supported: the models served here read text only.", "images")
        if not prompt and not suffix:
            await self.load_or_unload(model, body)
            return
        runner = await self.ctx.ready_runner()
        raw = body.get("raw") is True or bool(suffix)
        messages: list[dict[str, Any]] = []
        if isinstance(system, str) and system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": prompt})
        think = body.get("think")
        turn = TurnRequest(model, openai_body(body, messages), reasoning="drop" if think is False else "split")
        params = engine_params(self.ctx, turn, await model_traits(self.ctx, self.settings, model))
        await self.load_first(model, params.keep_alive, num_ctx(body))
        if raw:
            text = await fill_in_the_middle(runner, model, prompt, suffix) if suffix else prompt
            stream = runner.complete(model, text, params)
        else:
            stream = runner.chat(model, messages, params)
        await self.run_cancellable(self.answer(model, stream, turn, self.streaming(body)))


class EmbedHandler(OllamaHandler):
    """``POST /api/embed`` (``input``: a string or a list) and the legacy ``/api/embeddings`` (``prompt``)."""

    route_name = "ollama_embed"
    legacy = False

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        model = self.model_name(body)
        value = body.get("prompt") if self.legacy else body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            key = "prompt" if self.legacy else "input"
            raise InvalidRequest(f"{key} must be a non-empty string" + ("." if self.legacy else " or list."), key)
        runner = await self.ctx.ready_runner()
        keep_alive = keep_alive_seconds(body)
        if keep_alive is not None:
            await runner.load(model, keep_alive=keep_alive)
        started = time.perf_counter()
        result = await runner.embed(model, texts)
        if self.legacy:
            self.write_json({"embedding": result.vectors[0]})
            return
        self.write_json(
            {
                "model": model,
                "embeddings": result.vectors,
                "total_duration": ns(time.perf_counter() - self.started_at),
                "load_duration": ns(started - self.started_at),
                "prompt_eval_count": result.prompt_tokens,
            }
        )


class LegacyEmbeddingsHandler(EmbedHandler):
    route_name = "ollama_embeddings"
    legacy = True
