"""The ModelService: the product's rules once (rm/purge of loaded models, configure, load, upload), typed results.

Real store, real worker processes on tiny generated models; the HTTP routes are thin over this (test_api_runner).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mr_notebook import errors
from mr_notebook.api.standalone import start_in_thread
from mr_notebook.engine import GenerationParams, collect
from mr_notebook.errors import (
    BY_CODE,
    ERRORS,
    InvalidModelFile,
    InvalidRequest,
    LocalFileNotFound,
    ModelInUse,
    ModelLoadError,
    ModelNotFound,
    MrNotebookError,
    RemoteEngineError,
    StoreError,
    error_for_code,
)
from mr_notebook.service import LoadedModel, ModelService, Progress, Removal, SyncService
from mr_notebook.service.upload import FLUSH_SIZE
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory

HI = [{"role": "user", "content": "hi"}]
LOOP = "one two three "


@pytest.fixture
def store(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Store:
    store = Store(tmp_path / "home")
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    # Never stops, with room for 60,000 tokens: it stays busy for as long as a test needs it to.
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True, context_length=65536), "ai/loop")
    store.configure("ai/loop", context_size=65536)
    return store


@pytest.fixture
async def service(store: Store) -> AsyncIterator[ModelService]:
    service = ModelService(store, settings=EngineSettings(keep_alive=30))
    yield service
    await service.close()


async def wait_until(predicate: Callable[[], bool], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workers() -> set[int]:
    found = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if "mr_notebook.engine.worker" in " ".join(child.cmdline()) and alive(child.pid):
                found.add(child.pid)
        except psutil.Error:
            pass
    return found


async def test_store_verbs_give_typed_results_and_start_no_engine(service: ModelService, store: Store) -> None:
    before = workers()  # workers other tests of this process may still be ending
    names = [entry.name for entry in await service.list()]
    assert names == ["ai/loop:latest", "ai/tiny:latest"] or sorted(names) == ["ai/loop:latest", "ai/tiny:latest"]
    tiny = await service.inspect("ai/tiny")
    assert (await service.tag("ai/tiny", "me/copy")).tags == ["ai/tiny:latest", "me/copy:latest"]
    assert await service.rm(["me/copy"]) == Removal(untagged=["me/copy:latest"], deleted=[])
    usage = await service.df()
    assert usage.models == 2 and usage.total == usage.blobs > 0
    assert (await service.prune()).files == 0
    assert service.runner is not None  # list looked for remote engines' models: a Runner exists, with no worker
    assert await service.ps() == [] and workers() <= before
    removal = await service.rm(["ai/tiny"])
    assert removal == Removal(untagged=["ai/tiny:latest"], deleted=[tiny.id], unloaded=[])
    with pytest.raises(ModelNotFound):
        await service.inspect("ai/tiny")


async def test_rm_unloads_an_idle_model_and_refuses_a_busy_one_without_force(service: ModelService) -> None:
    row = await service.load("ai/tiny")
    assert isinstance(row, LoadedModel) and row.backend == "llama.cpp" and alive(row.pid)
    await service.tag("ai/tiny", "ai/alias")
    # One of two names: the model stays, and so does its worker.
    assert (await service.rm(["ai/alias"])).unloaded == []
    assert [r.model for r in await service.ps()] == ["ai/tiny:latest"]  # named as list names it
    removal = await service.rm(["ai/tiny"])
    assert removal.unloaded == ["ai/tiny:latest"] and removal.deleted
    await wait_until(lambda: not alive(row.pid))
    # A model answering a request is not deleted under it without force.
    runner = await service.ready_runner()
    params = GenerationParams.from_request({"max_tokens": 60_000})
    stream = runner.chat("ai/loop", HI, params)
    await stream.__anext__()
    with pytest.raises(ModelInUse, match=r"ai/loop:latest \(1 running, 0 waiting\).*force"):
        await service.rm(["ai/loop"])
    assert (await service.inspect("ai/loop")).name == "ai/loop:latest"
    (busy,) = await service.ps()
    forced = await service.rm(["ai/loop"], force=True)
    assert forced.unloaded == ["ai/loop:latest"] and forced.deleted
    with pytest.raises(MrNotebookError):  # its request ends with an error, not silence
        async for _ in stream:
            pass
    await wait_until(lambda: not alive(busy.pid))


async def test_purge_unloads_first_and_refuses_busy_models(service: ModelService) -> None:
    runner = await service.ready_runner()
    stream = runner.chat("ai/loop", HI, GenerationParams.from_request({"max_tokens": 60_000}))
    await stream.__anext__()
    with pytest.raises(ModelInUse):
        await service.purge()
    assert len(await service.list()) == 2
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: all(not r.busy for r in service._loaded()))
    result = await service.purge()
    assert (result.models, result.unloaded) == (2, 1) and result.bytes > 0
    assert await service.list() == [] and await service.ps() == []


async def test_configure_validates_and_reloads_idle_and_busy_workers(service: ModelService) -> None:
    with pytest.raises(InvalidRequest) as bad:
        await service.configure("ai/tiny", context_size=0)
    assert bad.value.param == "context_size"
    with pytest.raises(InvalidRequest) as bad:
        await service.configure("ai/tiny", keep_alive="forever")
    assert bad.value.param == "keep_alive"
    # Not loaded: the settings are stored, nothing is loaded because of them.
    done = await service.configure("ai/tiny", context_size=256)
    assert done.model.settings == {"context_size": 256} and (done.reloaded, done.pending) == ([], [])
    assert await service.ps() == []
    first = await service.load("ai/tiny")
    assert first.context_size == 256
    # Idle: reloaded now, with the new settings.
    done = await service.configure("ai/tiny", context_size=512, keep_alive="10m")
    assert done.reloaded == ["ai/tiny:latest"] and done.to_json()["settings"] == {
        "context_size": 512,
        "keep_alive": 600.0,
    }
    await wait_until(lambda: any(r.context_size == 512 for r in service._loaded()))
    assert not alive(first.pid)
    # Busy: its request goes on on the old worker (not cut), then the new settings apply.
    runner = await service.ready_runner()
    loop_row = await service.load("ai/loop")
    stream = runner.chat("ai/loop", HI, GenerationParams.from_request({"max_tokens": 60_000}))
    await stream.__anext__()
    done = await service.configure("ai/loop", context_size=256)
    assert done.pending == ["ai/loop:latest"] and done.reloaded == []
    for _ in range(20):
        assert (await stream.__anext__()).text  # still answering, on the old worker
    assert [r.pid for r in service._loaded() if r.model == "ai/loop:latest"] == [loop_row.pid]
    await stream.aclose()  # type: ignore[attr-defined]  # it goes idle: now it reloads
    await wait_until(lambda: any(r.model == "ai/loop:latest" and r.context_size == 256 for r in service._loaded()))
    assert not alive(loop_row.pid)


async def test_load_reports_progress_and_returns_the_ps_row(service: ModelService) -> None:
    events: list[Progress] = []
    row = await service.load("ai/tiny", keep_alive="2m", progress=events.append)
    assert [e.status for e in events] == ["loading", "loaded"]
    assert "ai/tiny" in events[0].message and str(row.pid) in events[-1].message
    assert row.keep_alive == 120 and row.expires_at is not None
    (now,) = await service.ps()
    assert {**row.to_json(), "memory": 0} == {**now.to_json(), "memory": 0}  # the same row (its RSS moves)
    # Whatever spelling loads it (short name, full name, id prefix), ps names it as list does, once.
    by_id = await service.load((await service.inspect("ai/tiny")).id.removeprefix("sha256:")[:12])
    assert (row.model, by_id.model, by_id.pid) == ("ai/tiny:latest", "ai/tiny:latest", row.pid)
    assert row.to_json()["expires_at"].endswith("Z")
    answer = await collect((await service.ready_runner()).chat("ai/tiny", HI, GenerationParams.from_request({})))
    assert answer.text == DEFAULT_REPLY
    with pytest.raises(ModelNotFound):
        await service.load("ai/absent")
    with pytest.raises(InvalidRequest):
        await service.load("ai/tiny", keep_alive="soon")
    assert await service.unload(None) == 1 and await service.ps() == []


async def test_closing_during_a_load_leaves_no_worker(store: Store) -> None:
    service = ModelService(store, settings=EngineSettings(keep_alive=30))
    before = workers()
    loading = asyncio.create_task(service.load("ai/tiny"))
    await wait_until(lambda: bool(workers() - before))
    (pid,) = workers() - before
    loading.cancel()  # the caller goes away: the load goes on (it belongs to the runner) ...
    with pytest.raises(asyncio.CancelledError):
        await loading
    again = asyncio.create_task(service.load("ai/tiny"))  # ... and a second caller joins it, or it is done
    await asyncio.sleep(0)
    await service.close()  # shutdown during or right after the load: the worker ends either way
    await asyncio.gather(again, return_exceptions=True)
    await wait_until(lambda: not alive(pid))
    assert workers() - before == set()


async def _upload(service: ModelService, name: str, data: bytes, chunk: int = 300_000, **kw: Any) -> Any:
    upload = service.upload(name, **kw)
    try:
        for start in range(0, len(data), chunk):
            await upload.write(data[start : start + chunk])
        return await upload.finish()
    finally:
        await upload.abort()


async def test_upload_streams_hashes_and_publishes_only_a_whole_gguf(
    service: ModelService, store: Store, tiny_model_factory: TinyModelFactory
) -> None:
    data = tiny_model_factory(reply="Uploaded.", seed=7).read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    record = await _upload(service, "me/uploaded:v1", data, size=len(data), digest=digest)
    assert record.files[0].digest == digest and record.source == "upload"
    answer = await collect((await service.ready_runner()).chat("me/uploaded:v1", HI, GenerationParams.from_request({})))
    assert answer.text == "Uploaded."
    before = {p.name for p in store.blobs_dir.iterdir()}
    with pytest.raises(InvalidModelFile, match="not a GGUF"):
        await _upload(service, "me/html", b"<html>" + data[6:])
    with pytest.raises(InvalidRequest) as wrong:
        await _upload(service, "me/wrong", data, digest="sha256:" + "0" * 64)
    assert wrong.value.param == "digest"
    with pytest.raises(InvalidRequest) as short:
        await _upload(service, "me/short", data[: len(data) // 2], size=len(data))
    assert short.value.param == "size"
    with pytest.raises(InvalidModelFile):  # a GGUF magic and then garbage: the header check refuses it
        await _upload(service, "me/garbage", b"GGUF" + b"\xff" * 5000)
    for name in ("me/html", "me/wrong", "me/short", "me/garbage"):
        with pytest.raises(ModelNotFound):
            await service.inspect(name)
    assert {p.name for p in store.blobs_dir.iterdir()} == before
    assert list((store.home / "uploads").glob("*.part")) == []
    # An announced size the disk cannot hold is refused at the first write, before the disk fills.
    with pytest.raises(StoreError, match="Not enough disk space"):
        await _upload(service, "me/huge", data * (FLUSH_SIZE // len(data) + 1), size=2**60)
    # A server killed mid-upload leaves its partial file: prune deletes it, but never one being received.
    (store.home / "uploads" / "left.part").write_bytes(b"GGUF" + b"\0" * 1000)
    running = service.upload("me/running")
    await running.write(data * (FLUSH_SIZE // len(data) + 1))  # past the buffer: on disk now
    assert (await service.prune()).to_json() == {"files": 1, "bytes": 1004}
    assert [p.name for p in (store.home / "uploads").glob("*.part")] == [running.path.name]
    await running.abort()


async def test_package_hard_links_a_file_on_the_same_filesystem(
    service: ModelService, store: Store, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    source = tmp_path / "model.gguf"
    source.write_bytes(tiny_model_factory(reply="Packaged.", seed=3).read_bytes())
    record = await service.package(str(source), "me/packaged")
    assert store.paths(record)[0].stat().st_ino == source.stat().st_ino  # no byte copied
    # Paths from a request are the caller's words: unreadable ones are a 400 naming the path, never a 500.
    for path in ("/" + "a" * 5000 + ".gguf", str(tmp_path / "absent.gguf"), "bad\0path"):
        with pytest.raises((LocalFileNotFound, InvalidRequest)):
            await service.package(path, "me/bad")
    with pytest.raises(InvalidModelFile):
        await service.package(__file__, "me/bad")


def test_sync_service_runs_the_same_rules_for_code_without_a_loop(store: Store) -> None:
    sync = SyncService(store, settings=EngineSettings(keep_alive=30))
    try:
        row = sync.call(sync.service.load("ai/tiny"))
        assert sync.call(sync.service.ps())[0].pid == row.pid
        served = start_in_thread(sync, store)  # %model serve: the same service (rules, workers) over HTTP
        try:
            (served_row,) = httpx.get(served.url + "engines/ps", timeout=30).json()
            stable = ("model", "id", "pid", "context_size", "keep_alive", "loaded_at", "backend_name")
            assert {k: served_row[k] for k in stable} == {k: row.to_json()[k] for k in stable}
            assert httpx.get(served.url + "engines/status", timeout=30).json()["mode"] == "kernel"
        finally:
            served.stop()
        removal = sync.call(sync.service.rm(["ai/tiny"]))
        assert removal.unloaded == ["ai/tiny:latest"]
        assert sync.call(sync.service.status()).loaded_models == 0
    finally:
        sync.close()
    assert not alive(row.pid)


def test_the_error_table_lists_every_error_class_once_in_both_directions() -> None:
    defined = {
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, MrNotebookError) and value.__module__ == errors.__name__
    }
    assert defined == set(ERRORS)
    assert len({cls.code for cls in ERRORS}) == len(ERRORS)  # one class per wire code
    for cls in ERRORS:
        rebuilt = error_for_code(cls.code, "message", cls.http_status, "p")
        assert type(rebuilt) is cls and str(rebuilt) == "message" and rebuilt.param == "p"
        assert BY_CODE[cls.code] is cls
    assert type(error_for_code("no_such_code", "gone", 404)) is ModelNotFound
    assert type(error_for_code(None, "bad", 422)) is InvalidRequest
    refused = error_for_code("remote_engine_error", "the engine said no", 422)
    assert isinstance(refused, RemoteEngineError) and (refused.http_status, refused.error_type) == (
        422,
        "invalid_request_error",
    )
    unknown = error_for_code("teapot", "odd", 503)
    assert type(unknown) is MrNotebookError and unknown.http_status == 503


def test_no_user_visible_error_class_lives_outside_errors_py() -> None:
    root = Path(errors.__file__).parent
    ours = {cls.__name__ for cls in ERRORS}
    outside = []
    for path in root.rglob("*.py"):
        if path.name == "errors.py" and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & ours:
                    outside.append(f"{path.relative_to(root)}:{node.lineno} {node.name}")
    assert outside == []


async def test_remote_engines_models_are_inspected_and_loaded_but_never_removed(store: Store) -> None:
    service = ModelService(store, engines=[{"name": "box", "url": "http://127.0.0.1:9"}])
    try:
        remote = await service.inspect("box/qwen")
        assert remote.to_json()["id"] == "remote:box/qwen" and remote.to_json()["config"]["engine"] == "box"
        assert (await service.load("box/qwen")).backend == "remote"  # nothing to load here: the engine serves it
        for verb in (service.rm(["box/qwen"]), service.configure("box/qwen", context_size=512)):
            with pytest.raises(InvalidRequest, match="remote engine box"):
                await verb
    finally:
        await service.close()


async def test_a_worker_that_dies_before_reading_its_orders_is_a_load_error(store: Store) -> None:
    # PYTHONHOME pointing nowhere: the worker's interpreter dies at start, before it reads the load message, so
    # our socket is reset; that is a ModelLoadError quoting what it printed, not a ConnectionResetError (a 500).
    settings = EngineSettings(keep_alive=30, extra_env={"PYTHONHOME": "/nonexistent"})
    service = ModelService(store, settings=settings)
    try:
        with pytest.raises(ModelLoadError, match=r"exited with code 1 while loading.*encodings"):
            await service.load("ai/tiny")
        assert await service.ps() == []
    finally:
        await service.close()
