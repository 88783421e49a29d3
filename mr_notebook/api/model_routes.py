"""Docker Model Runner's store routes (``/models…``): list, inspect, tag, rm, purge, prune, pull, load an upload.

Thin: each handler parses its request, makes one ModelService call and writes the typed result's JSON. The
rules (what rm does to a loaded model, what purge refuses) live in :mod:`mr_notebook.service`.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

from mr_notebook.api.base import ApiHandler
from mr_notebook.api.progress import NdjsonWriter, progress_line, relay
from mr_notebook.errors import InvalidRequest, MrNotebookError
from mr_notebook.service import Progress, ProgressCallback, PullResult, Upload
from mr_notebook.store import parse_ref


def flag(handler: tornado.web.RequestHandler, name: str) -> bool:
    """A boolean query argument (``?force=true``); anything else than true/false is a 400 naming it."""
    value = handler.get_argument(name, "false").lower()
    if value not in ("1", "true", "yes", "0", "false", "no", ""):
        raise InvalidRequest(f"{name} must be true or false.", name)
    return value in ("1", "true", "yes")


class ModelsHandler(ApiHandler):
    """``GET /models``: every stored model in Docker Model Runner's ``list --json`` shape, then remote ones."""

    route_name = "models"

    @tornado.web.authenticated
    async def get(self) -> None:
        self.write_json([entry.to_json() for entry in await self.ctx.service.list()])


class ModelHandler(ApiHandler):
    """``GET /models/{ref}`` (inspect) and ``DELETE /models/{ref}[?force=true]`` (rm)."""

    route_name = "model"

    @tornado.web.authenticated
    async def get(self, ref: str) -> None:
        self.write_json((await self.ctx.service.inspect(ref)).to_json())

    @tornado.web.authenticated
    async def delete(self, ref: str) -> None:
        removal = await self.ctx.service.rm([ref], force=flag(self, "force"))
        self.write_json(removal.to_json())


class PurgeHandler(ApiHandler):
    """``DELETE /models/purge[?force=true]``: unload everything, then delete every model and blob."""

    route_name = "purge"

    @tornado.web.authenticated
    async def delete(self) -> None:
        self.write_json((await self.ctx.service.purge(force=flag(self, "force"))).to_json())


class PruneHandler(ApiHandler):
    """``POST /models/prune``: delete partial downloads and blobs no model uses."""

    route_name = "prune"

    @tornado.web.authenticated
    async def post(self) -> None:
        self.write_json((await self.ctx.service.prune()).to_json())


class TagHandler(ApiHandler):
    """``POST /models/{ref}/tag`` with ``{"target": "ns/name:tag"}`` (or Docker's ``?repo=…&tag=…``)."""

    route_name = "tag"

    @tornado.web.authenticated
    async def post(self, ref: str) -> None:
        target: Any = None
        if self.request.body.strip():
            target = self.json_body().get("target")
        if target is None and self.get_argument("repo", None):
            repo, tag = self.get_argument("repo"), self.get_argument("tag", "latest")
            target = f"{repo}:{tag}"
        if not isinstance(target, str) or not target:
            raise InvalidRequest('Give the new name as {"target": "namespace/name:tag"}.', "target")
        record = await self.ctx.service.tag(ref, target)
        self.write_json({"message": f"Model {ref} tagged as {parse_ref(target)}", "model": record.to_json()}, 201)


class CreateHandler(ApiHandler):
    """``POST /models/create`` with ``{"from": REF}``: pull, streaming NDJSON progress lines.

    Nothing is sent before the first progress event past resolving, so a pull that fails at once (unknown
    repository, registry unreachable) still gets a proper HTTP status; later failures arrive as a ``type:
    error`` line. A client that goes away stops the pull (the partial file is kept for the next one).
    """

    route_name = "create"

    @tornado.web.authenticated
    async def post(self) -> None:
        body = self.json_body()
        source = body.get("from")
        if not isinstance(source, str) or not source.strip():
            raise InvalidRequest('Give the model to pull as {"from": "ai/smollm2"}.', "from")
        parse_ref(source)  # a bad reference is a 400 before anything starts
        await self.run_cancellable(self._pull(source))

    async def _pull(self, source: str) -> None:
        out = NdjsonWriter(self)
        held: list[Progress] = []

        async def write(event: Progress) -> None:
            if event.status == "resolving" and not out.started:
                held.append(event)  # a pull that fails while resolving still gets a real HTTP status
                return
            for line in [*held, event]:
                await out.line(progress_line(line))
            held.clear()

        def run(progress: ProgressCallback) -> Any:
            return self.ctx.service.pull(source, progress=progress)

        try:
            try:
                result: PullResult = await relay(run, write)
            except MrNotebookError as exc:
                if not out.started:
                    raise
                await out.error(exc)
                return
            for line in held:
                await out.line(progress_line(line))
            name = result.record.name
            await out.line(
                {
                    "type": "success",
                    "message": f"Model {name} is up to date"
                    if result.already_present
                    else f"Model pulled successfully: {name}",
                    "downloaded": result.downloaded,
                    "already_present": result.already_present,
                    "model": result.record.to_json(),
                }
            )
        except StreamClosedError:
            self.mark_client_gone()


@tornado.web.stream_request_body
class LoadModelHandler(ApiHandler):
    """``POST /models/load?name=NAME``: a GGUF file as the body (``application/octet-stream``), streamed to disk
    and hashed on the way (``&digest=sha256:…`` is checked); or ``{"name", "path"}`` as JSON: a file the server
    can read itself, hard-linked into the store when on the same filesystem (no bytes sent). 201 + the model.
    """

    route_name = "load_model"
    _upload: Upload | None = None
    _failure: MrNotebookError | None = None

    def body_limit(self) -> int:
        return self.ctx.limits.max_body_size if self._is_json() else self.ctx.limits.max_upload_size

    def _is_json(self) -> bool:
        return self.request.headers.get("Content-Type", "").split(";")[0].strip().lower() == "application/json"

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self._finished or self.request.method != "POST" or self._is_json():
            return
        name = self.get_argument("name", "")
        if not name:
            raise InvalidRequest(
                "Name the model: POST /models/load?name=namespace/name:tag with the file as body.", "name"
            )
        declared = self.request.headers.get("Content-Length")
        size = int(declared) if declared is not None and declared.strip().isdigit() else None
        self._upload = self.ctx.service.upload(name, size=size, digest=self.get_argument("digest", None))
        self._received = None  # the bytes go to the upload, not to memory

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        if self._upload is None:
            super().data_received(chunk)
        elif self._failure is None:
            try:
                await self._upload.write(chunk)
            except MrNotebookError as exc:  # answered once the body has arrived; the rest is dropped
                self._failure = exc
                await self._upload.abort()

    def on_connection_close(self) -> None:
        if self._upload is not None and not self._finished:
            self.ctx.in_background(self._upload.abort())  # the client went away mid-upload: drop the partial
        super().on_connection_close()

    @tornado.web.authenticated
    async def post(self) -> None:
        if self._upload is None:
            body = self.json_body()
            name, path = body.get("name"), body.get("path")
            if not isinstance(name, str) or not name or not isinstance(path, str) or not path:
                raise InvalidRequest('Send {"name": "namespace/name:tag", "path": "/path/model.gguf"}.', "path")
            record = await self.ctx.service.package(path, name)
        else:
            upload = self._upload
            try:
                if self._failure is not None:
                    raise self._failure
                record = await upload.finish()
            finally:
                await upload.abort()
        self.write_json({"message": f"Model {record.name} loaded", "model": record.to_json()}, 201)
