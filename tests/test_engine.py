"""The engine with real worker processes running real llama.cpp on tiny generated models."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from mr_notebook.engine import Chunk, GenerationParams, Runner, SyncRunner, collect
from mr_notebook.errors import (
    ContextLengthExceeded,
    InsufficientMemory,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    QueueFull,
    WorkerCrashed,
)
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory, reply_pieces

HI = [{"role": "user", "content": "hi"}]
LOOP = "one two three "


def params(**body: Any) -> GenerationParams:
    return GenerationParams.from_request(body)


@pytest.fixture
def store(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Store:
    """A store holding the tiny models the tests use."""
    store = Store(tmp_path / "home")
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply="Second model here.", seed=1), "ai/second")
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True), "ai/loop")
    store.import_gguf(tiny_model_factory(reply='{"a": 1}'), "ai/json")
    store.import_gguf(tiny_model_factory(context_length=64), "ai/short")
    return store


async def wait_until(predicate: Callable[[], bool], limit: float = 15.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_chat_complete_stream_embed_tokenize(runner: Runner) -> None:
    answer = await collect(runner.chat("ai/tiny", HI, params()))
    assert answer.text == DEFAULT_REPLY
    assert answer.finish_reason == "stop"
    assert answer.usage.completion_tokens == len(reply_pieces(DEFAULT_REPLY))
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    parts = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    chunks: list[Chunk] = [c async for c in runner.chat("tiny", parts, params(temperature=0))]
    assert "".join(c.text for c in chunks) == DEFAULT_REPLY
    assert len(chunks) > 2
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None

    text = await collect(runner.complete("ai/tiny", "say hello", params(max_tokens=50)))
    assert text.text == DEFAULT_REPLY and text.finish_reason == "stop"

    vectors = await runner.embed("ai/tiny", ["hello world", "the tiny model"])
    assert len(vectors.vectors) == 2 and len(vectors.vectors[0]) == 64
    assert vectors.vectors[0] != vectors.vectors[1]
    assert abs(sum(x * x for x in vectors.vectors[0]) - 1.0) < 1e-3
    assert vectors.prompt_tokens > 0

    tokens = await runner.tokenize("ai/tiny", "hello world")
    assert tokens and await runner.detokenize("ai/tiny", tokens) in ("hello world", " hello world")

    (status,) = runner.ps()
    assert status.model == "ai/tiny:latest" or status.model in ("ai/tiny", "tiny")
    assert status.pid > 0 and status.memory > 0 and status.context_size == 512
    assert status.in_flight == 0 and status.queued == 0 and status.expires_at is not None
    assert status.to_json()["pid"] == status.pid


async def test_length_stop_strings_and_logprobs(runner: Runner) -> None:
    answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=7)))
    assert answer.finish_reason == "length"
    assert answer.usage.completion_tokens == 7
    assert answer.text.startswith("one two three one")

    stopped = await collect(runner.chat("ai/loop", HI, params(stop=["three"], max_tokens=50)))
    assert stopped.text == "one two "
    assert stopped.finish_reason == "stop"
    assert stopped.usage.completion_tokens < 50

    scored = await collect(runner.chat("ai/tiny", HI, params(logprobs=True, top_logprobs=2)))
    assert scored.text == DEFAULT_REPLY
    assert scored.logprobs is not None and len(scored.logprobs) == len(reply_pieces(DEFAULT_REPLY))
    first = scored.logprobs[0]
    assert first["logprob"] <= 0 and first["token"] and first["top_logprobs"]
    plain = await collect(runner.chat("ai/tiny", HI, params()))  # logprobs off again afterwards
    assert plain.logprobs is None and plain.text == DEFAULT_REPLY


async def test_json_response_formats(runner: Runner) -> None:
    answer = await collect(runner.chat("ai/json", HI, params(response_format={"type": "json_object"})))
    assert json.loads(answer.text) == {"a": 1}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    answer = await collect(runner.chat("ai/json", HI, params(response_format=fmt)))
    assert json.loads(answer.text) == {"a": 1}
    # The grammar overrides what the model would rather say.
    forced = await collect(runner.chat("ai/tiny", HI, params(response_format={"type": "json_object"}, max_tokens=8)))
    assert forced.text.lstrip().startswith("{")
    assert not forced.text.startswith(DEFAULT_REPLY)


def test_parameter_validation_names_the_param() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 3}, "top_p"),
        ({"stop": 5}, "stop"),
        ({"seed": True}, "seed"),
        ({"n": 17}, "n"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"chat_template_kwargs": []}, "chat_template_kwargs"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"keep_alive": "soon"}, "keep_alive"),
    ]
    for body, param in cases:
        with pytest.raises(InvalidRequest) as info:
            GenerationParams.from_request(body)
        assert info.value.param == param, body
    ok = GenerationParams.from_request(
        {"max_completion_tokens": 5, "stop": "x", "frobnicate": 1, "n": 1, "keep_alive": "5m", "logprobs": 2}
    )
    assert (ok.max_tokens, ok.stop, ok.keep_alive, ok.logprobs, ok.top_logprobs) == (5, ["x"], 300.0, True, 2)


async def test_bad_messages_and_unknown_model(runner: Runner) -> None:
    with pytest.raises(InvalidRequest) as info:
        await collect(runner.chat("ai/tiny", [{"content": "no role"}], params()))
    assert info.value.param == "messages"
    with pytest.raises(ModelNotFound, match="pull"):
        await collect(runner.chat("ai/nope", HI, params()))
    with pytest.raises(InvalidRequest) as info:
        await runner.embed("ai/tiny", [""])
    assert info.value.param == "input"


async def test_two_models_answer_concurrently(runner: Runner) -> None:
    first, second = await asyncio.gather(
        collect(runner.chat("ai/tiny", HI, params())), collect(runner.chat("ai/second", HI, params()))
    )
    assert first.text == DEFAULT_REPLY and second.text == "Second model here."
    pids = {s.model: s.pid for s in runner.ps()}
    assert len(pids) == 2 and len(set(pids.values())) == 2


async def test_requests_beyond_the_parallel_slots_wait_in_arrival_order(runner: Runner) -> None:
    finished: list[str] = []

    async def one(name: str, max_tokens: int) -> Any:
        answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=max_tokens)))
        finished.append(name)
        return answer

    def waiting() -> tuple[int, int]:
        return (runner.ps()[0].in_flight, runner.ps()[0].queued) if runner.ps() else (0, 0)

    # Four sequences run at once (the default parallel setting); these never end on their own.
    streams = [runner.chat("ai/loop", HI, params()) for _ in range(4)]
    for stream in streams:
        await stream.__anext__()
    assert waiting() == (4, 0) and runner.ps()[0].parallel == 4
    first = asyncio.create_task(one("first", 12))
    await wait_until(lambda: waiting() == (4, 1))
    second = asyncio.create_task(one("second", 12))
    await wait_until(lambda: waiting() == (4, 2))
    await streams[0].aclose()  # type: ignore[attr-defined]  # one slot frees: the earlier request gets it
    answers = await asyncio.gather(first, second)
    assert finished == ["first", "second"]
    assert [a.usage.completion_tokens for a in answers] == [12, 12]
    for stream in streams[2:]:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_cancel_stops_generation_and_the_next_request_runs(runner: Runner) -> None:
    stream = runner.chat("ai/loop", HI, params())  # would run until the context is full
    seen = [await stream.__anext__() for _ in range(3)]
    assert "".join(c.text for c in seen).startswith("one")
    await stream.aclose()  # type: ignore[attr-defined]
    answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=4)))
    assert answer.finish_reason == "length" and answer.usage.completion_tokens == 4
    await wait_until(lambda: runner.ps()[0].in_flight == 0)

    async def consume() -> None:
        async for _ in runner.chat("ai/loop", HI, params()):
            pass

    task = asyncio.create_task(consume())
    await wait_until(lambda: runner.ps()[0].in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=3)))
    assert answer.usage.completion_tokens == 3


async def test_queue_limit(store: Store) -> None:
    runner = Runner(store, EngineSettings(keep_alive=30, max_queue=1))
    try:
        running = [runner.chat("ai/loop", HI, params()) for _ in range(4)]
        for stream in running:
            await stream.__anext__()
        waiting = runner.chat("ai/loop", HI, params(max_tokens=2))
        task = asyncio.create_task(waiting.__anext__())  # type: ignore[arg-type]
        await wait_until(lambda: runner.queue_depth() == {"ai/loop:latest": 1})
        with pytest.raises(QueueFull):
            await collect(runner.chat("ai/loop", HI, params()))
        await running[0].aclose()  # type: ignore[attr-defined]
        assert (await task).text
        await waiting.aclose()  # type: ignore[attr-defined]
        for stream in running[1:]:
            await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await runner.close()


async def test_worker_crash_fails_requests_and_recovers(runner: Runner) -> None:
    stream = runner.chat("ai/loop", HI, params())
    await stream.__anext__()
    pid = runner.ps()[0].pid
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        async for _ in stream:
            pass
    assert "SIGKILL" in str(info.value) and "ai/loop" in str(info.value)
    await wait_until(lambda: runner.ps() == [])
    answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=3)))
    assert answer.usage.completion_tokens == 3
    assert runner.ps()[0].pid != pid


async def test_corrupt_model_file(tmp_path: Path, store: Store, tiny_model_factory: TinyModelFactory) -> None:
    copy = tmp_path / "broken.gguf"  # its own content, so that no other model shares the damaged blob
    shutil.copyfile(tiny_model_factory(seed=7), copy)
    record = store.import_gguf(copy, "ai/broken")
    blob = store.paths(record)[0]
    os.truncate(blob, blob.stat().st_size // 2)
    runner = Runner(store, EngineSettings(keep_alive=30))
    try:
        with pytest.raises(ModelLoadError) as info:
            await collect(runner.chat("ai/broken", HI, params()))
        assert blob.name in str(info.value)
        assert (await collect(runner.chat("ai/tiny", HI, params()))).text == DEFAULT_REPLY
    finally:
        await runner.close()


async def test_prompt_longer_than_context(runner: Runner) -> None:
    long = [{"role": "user", "content": " ".join(f"w{i}" for i in range(100))}]
    with pytest.raises(ContextLengthExceeded) as info:
        await collect(runner.chat("ai/short", long, params()))
    message = str(info.value)
    prompt_tokens = int(message.split("prompt is ")[1].split()[0])
    context = int(message.split("context holds ")[1].split()[0])
    # llama.cpp rounds a context up to its minimum of 256; the message states the real one.
    assert context == runner.ps()[0].context_size
    assert prompt_tokens > context


async def test_keep_alive_zero_and_timer_unload(runner: Runner) -> None:
    await collect(runner.chat("ai/tiny", HI, params(keep_alive=0)))
    await wait_until(lambda: runner.ps() == [])
    status = await runner.load("ai/second", keep_alive=0.3)
    assert status.keep_alive == 0.3 and status.expires_at is not None
    await wait_until(lambda: runner.ps() == [] and gone(status.pid))


async def test_memory_budget_and_max_models(store: Store) -> None:
    tight = Runner(store, EngineSettings(memory_budget=1024 * 1024))
    with pytest.raises(InsufficientMemory) as info:
        await tight.load("ai/tiny")
    assert "needs about" in str(info.value) and "context" in str(info.value)
    await tight.close()

    single = Runner(store, EngineSettings(max_models=1, keep_alive=30))
    try:
        first = await single.load("ai/tiny")
        second = await single.load("ai/second")
        assert [s.model for s in single.ps()] == ["ai/second:latest"]
        await wait_until(lambda: gone(first.pid))
        assert second.pid != first.pid
        assert await single.unload() == 1
        assert single.ps() == [] and gone(second.pid)
    finally:
        await single.close()


def test_sync_runner_from_plain_code(store: Store) -> None:
    engine = SyncRunner(store, EngineSettings(keep_alive=30))
    try:
        text = "".join(c.text for c in engine.chat("ai/tiny", HI, params()))
        assert text == DEFAULT_REPLY
        stream = engine.chat("ai/loop", HI, params())
        assert next(stream).text
        stream.close()  # cancels in the worker
        assert [c.finish_reason for c in engine.complete("ai/loop", "go", params(max_tokens=2))][-1] == "length"
        assert len(engine.embed("ai/tiny", ["x"]).vectors) == 1
        assert {s.model for s in engine.ps()} == {"ai/tiny:latest", "ai/loop:latest"}
        assert engine.unload(["ai/loop"]) == 1
    finally:
        engine.close()


def test_importing_the_engine_does_not_import_llama_cpp() -> None:
    code = (
        "import sys, mr_notebook.engine; "
        "bad = [m for m in ('llama_cpp', 'IPython', 'tornado', 'jupyter_server') if m in sys.modules]; "
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
