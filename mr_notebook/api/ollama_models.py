"""Ollama's model-management API under ``/api``: version, tags, show, ps, pull, delete, copy; and ``GET /``."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.ollama_routes import OLLAMA_VERSION, OllamaHandler, rfc3339
from mr_notebook.api.progress import relay
from mr_notebook.api.turns import model_traits
from mr_notebook.digests import short_id
from mr_notebook.errors import InvalidRequest, ModelNotFound, MrNotebookError
from mr_notebook.service import ProgressCallback
from mr_notebook.store import parse_ref

if TYPE_CHECKING:
    from mr_notebook.store import ModelRecord
    from mr_notebook.store.pull import PullProgress


def details(record: ModelRecord) -> dict[str, Any]:
    arch = str(record.config.get("architecture") or "")
    return {
        "parent_model": "",
        "format": str(record.config.get("format") or "gguf"),
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": str(record.config.get("parameters") or ""),
        "quantization_level": str(record.config.get("quantization") or ""),
    }


def digest(record: ModelRecord) -> str:
    return record.id.removeprefix("sha256:")


class RootHandler(OllamaHandler):
    """``GET /``: what Ollama answers, so that clients probing for an Ollama server find one."""

    route_name = "root"

    @tornado.web.authenticated
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("Ollama is running")

    @tornado.web.authenticated
    def head(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish()


class VersionHandler(OllamaHandler):
    route_name = "ollama_version"

    @tornado.web.authenticated
    def get(self) -> None:
        self.write_json({"version": OLLAMA_VERSION})


class TagsHandler(OllamaHandler):
    """``GET /api/tags``: every stored name, as Ollama lists models."""

    route_name = "ollama_tags"

    @tornado.web.authenticated
    async def get(self) -> None:
        records = await asyncio.to_thread(self.ctx.store.list)
        models = [
            {
                "name": tag,
                "model": tag,
                "modified_at": rfc3339(record.created),
                "size": record.size,
                "digest": digest(record),
                "details": details(record),
            }
            for record in records
            for tag in record.tags
        ]
        runner = await self.ctx.ready_runner()
        # Remote engines' models (issue 15): NAME/<id>, with the engine as their family and no local size.
        remote = {"parent_model": "", "format": "remote", "parameter_size": "", "quantization_level": ""}
        models += [
            {
                "name": f"{engine.name}/{model}",
                "model": f"{engine.name}/{model}",
                "modified_at": rfc3339(engine.models_at or 0),
                "size": 0,
                "digest": "",
                "details": {**remote, "family": engine.name, "families": [engine.name]},
            }
            for engine, model in await runner.remote.models()
        ]
        self.write_json({"models": models})


class ShowHandler(OllamaHandler):
    """``POST /api/show``: template, parameters, details, model_info and capabilities."""

    route_name = "ollama_show"

    @tornado.web.authenticated
    async def post(self) -> None:
        name = self.model_name(self.json_body())
        remote = (await self.ctx.ready_runner()).remote.resolve(name)
        if remote is not None:  # a remote engine's model (issue 15): what can be said without its files
            family = {"family": remote[0].name, "families": [remote[0].name]}
            self.write_json(
                {
                    "modelfile": f"# Served by the remote engine {remote[0].name} ({remote[0].spec.url})\n",
                    "parameters": "",
                    "template": "",
                    "details": {
                        "parent_model": "",
                        "format": "remote",
                        "parameter_size": "",
                        "quantization_level": "",
                        **family,
                    },
                    "model_info": {"general.architecture": "remote"},
                    "capabilities": ["completion", "tools"],
                    "modified_at": rfc3339(remote[0].models_at or 0),
                }
            )
            return
        record = await asyncio.to_thread(self.ctx.store.get, name)
        traits = await model_traits(self.ctx, self.settings, name)
        metadata = record.config.get("gguf") if isinstance(record.config.get("gguf"), dict) else {}
        model_info: dict[str, Any] = dict(metadata or {})
        model_info["general.architecture"] = traits.architecture
        model_info[f"{traits.architecture}.context_length"] = traits.context_length
        parameters = []
        if record.settings.get("context_size"):
            parameters.append(f"num_ctx {record.settings['context_size']}")
        self.write_json(
            {
                "modelfile": f"# Modelfile generated by mr-notebook\nFROM {record.name}\n",
                "parameters": "\n".join(parameters),
                "template": traits.template,
                "details": details(record),
                "model_info": model_info,
                "capabilities": traits.capabilities(),
                "modified_at": rfc3339(record.created),
            }
        )


class OllamaPsHandler(OllamaHandler):
    """``GET /api/ps``: loaded models, with expiry, memory and context length (the service's ps rows)."""

    route_name = "ollama_ps"

    @tornado.web.authenticated
    async def get(self) -> None:
        models = []
        for row in await self.ctx.service.ps():
            if row.backend != "llama.cpp":
                continue  # remote engines manage their own memory: Ollama's ps lists loaded weights
            try:
                record: ModelRecord | None = await asyncio.to_thread(self.ctx.store.get, row.model)
            except ModelNotFound:
                record = None  # removed from the store while loaded
            if row.expires_at is not None:
                expires = row.expires_at
            elif row.keep_alive >= 0:
                expires = time.time() + row.keep_alive
            else:
                expires = time.time() + 100 * 365 * 86400  # never: Ollama shows a far-future time too
            models.append(
                {
                    "name": row.model,
                    "model": row.model,
                    "size": row.memory,
                    "digest": row.id.removeprefix("sha256:"),
                    "details": details(record) if record is not None else {},
                    "expires_at": rfc3339(expires),
                    "size_vram": 0,
                    "context_length": row.context_size,
                }
            )
        self.write_json({"models": models})


def _pull_line(event: PullProgress) -> dict[str, Any] | None:
    if event.status == "resolving":
        return {"status": "pulling manifest"}
    if event.status in ("downloading", "exists") and event.digest:
        done = event.total if event.status == "exists" else event.completed
        short = short_id(event.digest)
        return {"status": f"pulling {short}", "digest": event.digest, "total": event.total, "completed": done}
    if event.status == "verifying":
        return {"status": "verifying sha256 digest"}
    return None


class PullHandler(OllamaHandler):
    """``POST /api/pull``: NDJSON progress as Ollama writes it (``stream: false``: one final status)."""

    route_name = "ollama_pull"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        name = self.model_name(body)
        parse_ref(name)  # a bad reference is a 400 before anything starts
        streaming = body.get("stream", True)
        if not isinstance(streaming, bool):
            raise InvalidRequest("stream must be true or false.", "stream")
        await self.run_cancellable(self._pull(name, streaming))

    async def _pull(self, name: str, streaming: bool) -> None:
        async def write(event: PullProgress) -> None:
            line = _pull_line(event)
            if line is None or not streaming or event.status == "resolving":
                return  # resolving is held: a pull that fails then still gets a real HTTP status
            if not self._headers_written:
                await self.line({"status": "pulling manifest"})
            await self.line(line)

        def run(progress: ProgressCallback) -> Any:
            return self.ctx.service.pull(name, progress=progress)

        try:
            try:
                await relay(run, write)
            except MrNotebookError as exc:
                if not self._headers_written:
                    raise
                await self.stream_error(exc)
                return
            if streaming:
                if not self._headers_written:
                    await self.line({"status": "pulling manifest"})
                await self.line({"status": "writing manifest"})
                await self.line({"status": "success"})
            else:
                self.write_json({"status": "success"})
        except StreamClosedError:
            self.mark_client_gone()


class DeleteHandler(OllamaHandler):
    """``DELETE /api/delete``: remove a name (unloading the model when it was its last name and it is idle)."""

    route_name = "ollama_delete"

    @tornado.web.authenticated
    async def delete(self) -> None:
        # Ollama's clients know no force: the service's rule applies (an idle loaded model is unloaded first,
        # one answering requests is refused with 409 until they are done).
        await self.ctx.service.rm([self.model_name(self.json_body())])
        self.set_status(200)
        self.finish()


class CopyHandler(OllamaHandler):
    """``POST /api/copy`` with ``{"source", "destination"}``: a second name for the same model."""

    route_name = "ollama_copy"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source or not isinstance(destination, str) or not destination:
            raise InvalidRequest('Send {"source": "ai/smollm2", "destination": "ai/smollm2:mine"}.', "destination")
        await self.ctx.service.tag(source, destination)
        self.set_status(200)
        self.finish()
