"""OpenAI-compatible routes besides generation: embeddings and the model list; request helpers."""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import Callable
from typing import Any

import tornado.web

from mr_notebook.api.base import ApiHandler
from mr_notebook.engine.remote.registry import is_engine_name
from mr_notebook.errors import InvalidRequest
from mr_notebook.store import parse_ref

#: Who owns the models in /v1/models (Docker Model Runner's convention).
OWNED_BY = "docker"


def body_model(body: dict[str, Any], path_model: str | None) -> str:
    """The body's ``model`` wins; the model-in-path form (/engines/{model}/v1/…) may omit it."""
    model = body.get("model")
    if model is None or model == "":
        if path_model:
            return path_model
        raise InvalidRequest("model is required: give a stored model name such as ai/smollm2.", "model")
    if not isinstance(model, str):
        raise InvalidRequest(f"model must be a string, not {type(model).__name__}.", "model")
    if path_model and not model.startswith(f"{path_model}/") and is_engine_name(path_model):
        return f"{path_model}/{model}"  # /engines/NAME/v1/…: the body names a model of remote engine NAME
    return model


def optional_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, not {value!r}.", key)
    return value


def include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequest('stream_options must be an object like {"include_usage": true}.', "stream_options")
    return optional_bool(options, "include_usage")


def _as_base64(vector: list[float]) -> str:
    """OpenAI's ``encoding_format: base64``: little-endian float32 (the SDK's default request)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


class EmbeddingsHandler(ApiHandler):
    route_name = "embeddings"

    async def _texts(self, model: str, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return list(value)
        runner = await self.ctx.ready_runner()

        def is_tokens(v: Any) -> bool:
            return isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

        # Token arrays (LangChain sends them by default): back to text for this model's tokenizer.
        if is_tokens(value):
            return [await runner.detokenize(model, value)]
        if isinstance(value, list) and value and all(is_tokens(v) for v in value):
            return [await runner.detokenize(model, v) for v in value]
        raise InvalidRequest("input must be a non-empty string, a list of strings, or token arrays.", "input")

    @tornado.web.authenticated
    async def post(self, path_model: str | None = None) -> None:
        body = self.json_body()
        model = body_model(body, path_model)
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise InvalidRequest('encoding_format must be "float" or "base64".', "encoding_format")
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)):
            raise InvalidRequest("dimensions must be an integer.", "dimensions")
        texts = await self._texts(model, body.get("input"))
        runner = await self.ctx.ready_runner()
        result = await runner.embed(model, texts)
        if dimensions is not None and result.vectors and dimensions != len(result.vectors[0]):
            raise InvalidRequest(
                f"This model's embeddings have {len(result.vectors[0])} dimensions; omit dimensions or "
                f"ask for {len(result.vectors[0])}.",
                "dimensions",
            )
        encode: Callable[[list[float]], Any] = _as_base64 if encoding == "base64" else list
        self.write_json(
            {
                "object": "list",
                "data": [
                    {"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)
                ],
                "model": model,
                "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            }
        )


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNED_BY}


class OpenAIModelsHandler(ApiHandler):
    """``GET …/v1/models``: every stored name (each tag is a usable model id)."""

    route_name = "v1_models"

    @tornado.web.authenticated
    async def get(self, path_model: str | None = None) -> None:
        runner = await self.ctx.ready_runner()
        if path_model and runner.remote.is_engine(path_model):  # /engines/NAME/v1/models: that engine's own ids
            found = await runner.remote.models(refresh=True)
            data = [{**_model_object(m, 0), "owned_by": e.name} for e, m in found if e.name == path_model]
            self.write_json({"object": "list", "data": data})
            return
        records = await asyncio.to_thread(self.ctx.store.list)
        data = [_model_object(tag, r.created) for r in records for tag in r.tags]
        # Remote engines' models as NAME/<id>, owned by their engine (lists older than a few seconds are asked).
        data += [{**_model_object(f"{e.name}/{m}", 0), "owned_by": e.name} for e, m in await runner.remote.models()]
        self.write_json({"object": "list", "data": data})


class OpenAIModelHandler(ApiHandler):
    """``GET …/v1/models/{ref}``: one model, or 404 model_not_found with the pull hint."""

    route_name = "v1_model"

    @tornado.web.authenticated
    async def get(self, path_model: str | None = None, ref: str = "") -> None:
        remote = (await self.ctx.ready_runner()).remote.resolve(ref)
        if remote is not None:
            self.write_json({**_model_object(ref, 0), "owned_by": remote[0].name})
            return
        record = await asyncio.to_thread(self.ctx.store.get, ref)
        try:
            name = str(parse_ref(ref))
        except ValueError:
            name = record.name
        self.write_json(_model_object(name if name in record.tags else record.name, record.created))


async def _token_model(handler: ApiHandler, body: dict[str, Any]) -> str:
    """The body's model, or the only loaded one (llama-server serves one model and needs no name)."""
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    if model is not None:
        raise InvalidRequest("model must be a string.", "model")
    runner = await handler.ctx.ready_runner()
    loaded = runner.ps()
    if len(loaded) == 1:
        return loaded[0].model
    raise InvalidRequest(
        'model is required: send {"model": "ai/smollm2", …} (it may be left out only while exactly one model '
        "is loaded).",
        "model",
    )


class TokenizeHandler(ApiHandler):
    """``POST /tokenize``: llama-server's shape (``content`` → ``tokens``, ``with_pieces`` for the text)."""

    route_name = "tokenize"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        content = body.get("content")
        if not isinstance(content, str):
            raise InvalidRequest('content must be a string: {"content": "text to tokenize"}.', "content")
        with_pieces = optional_bool(body, "with_pieces")
        model = await _token_model(self, body)
        runner = await self.ctx.ready_runner()
        tokens = await runner.tokenize(model, content)
        if not with_pieces:
            self.write_json({"tokens": tokens})
            return
        pieces = [await runner.detokenize(model, [token]) for token in tokens]
        self.write_json({"tokens": [{"id": t, "piece": p} for t, p in zip(tokens, pieces, strict=True)]})


class DetokenizeHandler(ApiHandler):
    """``POST /detokenize``: ``tokens`` → ``content`` (llama-server's shape)."""

    route_name = "detokenize"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise InvalidRequest('tokens must be a list of token ids: {"tokens": [1, 2, 3]}.', "tokens")
        model = await _token_model(self, body)
        runner = await self.ctx.ready_runner()
        self.write_json({"content": await runner.detokenize(model, tokens) if tokens else ""})
