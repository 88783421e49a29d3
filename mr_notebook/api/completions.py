"""``/v1/completions``: text completions (``echo``, ``suffix`` for fill-in-the-middle, legacy logprobs)."""

from __future__ import annotations

from typing import Any

import tornado.web

from mr_notebook.api.generation import GenerationHandler
from mr_notebook.api.openai_routes import body_model, include_usage, optional_bool
from mr_notebook.api.turns import fill_in_the_middle
from mr_notebook.engine import Chunk
from mr_notebook.errors import InvalidRequest


def _legacy_logprobs(entries: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """Chat-style ``logprobs.content`` entries in the legacy completions shape."""
    if not entries:
        return None
    return {
        "tokens": [e.get("token") for e in entries],
        "token_logprobs": [e.get("logprob") for e in entries],
        "top_logprobs": [{t.get("token"): t.get("logprob") for t in e.get("top_logprobs") or []} for e in entries],
        "text_offset": [],
    }


class CompletionsHandler(GenerationHandler):
    route_name = "completions"
    echo = ""
    object_name = "text_completion"
    id_prefix = "cmpl-"

    def delta_choice(self, chunk: Chunk) -> dict[str, Any]:
        return {"index": 0, "text": chunk.text, "logprobs": _legacy_logprobs(chunk.logprobs), "finish_reason": None}

    def finish_choice(self, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}

    def whole_choice(
        self, text: str, finish_reason: str | None, logprobs: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        return {
            "index": 0,
            "text": self.echo + text,
            "logprobs": _legacy_logprobs(logprobs),
            "finish_reason": finish_reason,
        }

    @tornado.web.authenticated
    async def post(self, path_model: str | None = None) -> None:
        self.begin()
        body = self.json_body()
        model = body_model(body, path_model)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt must be a string (one prompt per request).", "prompt")
        self.echo = prompt if optional_bool(body, "echo") else ""
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise InvalidRequest("suffix must be a string (the text after the gap to fill).", "suffix")
        best_of = body.get("best_of")
        if best_of not in (None, 1):
            raise InvalidRequest("best_of must be 1: send one request per answer you need.", "best_of")
        streaming, usage = optional_bool(body, "stream"), include_usage(body)
        params = self.params(body)
        runner = await self.ctx.ready_runner()
        if suffix:
            prompt = await fill_in_the_middle(runner, model, prompt, suffix)
        await self.run_cancellable(
            self.respond(model, runner.complete(model, prompt, params), streaming=streaming, usage=usage)
        )

    def opening_choice(self) -> dict[str, Any] | None:
        # echo: the prompt comes back first, as its own delta (llama-server and OpenAI put it before the answer).
        return {"index": 0, "text": self.echo, "logprobs": None, "finish_reason": None} if self.echo else None
