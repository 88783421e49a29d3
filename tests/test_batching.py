"""Continuous batching in a real worker (issue 11): several sequences per llama_decode on tiny models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from mr_notebook.api.metrics import Metrics
from mr_notebook.engine import GenerationParams, Runner, collect, collect_choices
from mr_notebook.engine.handle import WorkerHandle
from mr_notebook.engine.memory import Estimate, default_threads
from mr_notebook.errors import InvalidRequest, WorkerCrashed
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory, reply_pieces
from tests.test_engine import HI, LOOP, wait_until

WORDS = ("hello", "world", "model", "tiny", "test", "user", "please", "thanks", "what", "how", "why", "yes")


def params(**body: Any) -> GenerationParams:
    return GenerationParams.from_request(body)


def text_of(n: int, seed: int = 0) -> str:
    return " ".join(WORDS[(i * 7 + seed) % len(WORDS)] for i in range(n))


@pytest.fixture
def store(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Store:
    store = Store(tmp_path / "home")
    store.import_gguf(tiny_model_factory(context_length=2048), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True, context_length=2048), "ai/loop")
    store.import_gguf(tiny_model_factory(reply='{"a": 1}'), "ai/json")
    store.import_gguf(tiny_model_factory(mixing=True, context_length=1024), "ai/mixing")
    return store


async def test_cancelling_one_of_several_running_sequences(runner: Runner) -> None:
    streams = [runner.chat("ai/loop", HI, params(max_tokens=300, logprobs=True)) for _ in range(3)]
    for stream in streams:
        await stream.__anext__()
    assert runner.ps()[0].in_flight == 3
    await streams[1].aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: runner.ps()[0].in_flight == 2)
    rest = [await collect(s) for s in (streams[0], streams[2])]
    for answer in rest:
        assert answer.finish_reason == "length" and answer.usage.completion_tokens == 300
        # One token per logprob entry: the 299 after the first chunk all arrived, none lost or repeated.
        assert answer.logprobs is not None and len(answer.logprobs) >= 299
        assert answer.text.strip() in LOOP * 100


@dataclass
class LoopStream:
    """A never-ending greedy stream (one logprob entry per token) in a worker of its own."""

    handle: WorkerHandle
    stream: Any
    counted: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def produced(self) -> int:
        """Tokens of the stream so far: those read plus those waiting in its queue (a message each)."""
        return self.counted + self.handle._pending[self.stream.rid].queue.qsize()


@contextlib.asynccontextmanager
async def loop_stream(factory: TinyModelFactory, *, n_batch: int, max_tokens: int) -> AsyncIterator[LoopStream]:
    path = factory(reply=LOOP, never_stop=True, context_length=2048)
    config = {"name": "loop", "path": str(path), "n_ctx": 2048, "parallel": 2, "n_batch": n_batch, "threads": 1}
    handle = WorkerHandle("loop", "id", config, Estimate(0, 0, 0), 30, lambda h: None)
    await handle.start(60)
    follower = None
    try:
        body = {"messages": HI, "params": params(max_tokens=max_tokens, logprobs=True).to_wire()}
        running = LoopStream(handle, handle.submit("chat", body))

        async def follow() -> None:
            while not running.done.is_set():
                message = await handle.receive(running.stream)
                if message["type"] == "done":
                    running.done.set()
                else:
                    running.counted += len(message.get("logprobs") or [])  # one token per logprob entry

        follower = asyncio.create_task(follow())
        await wait_until(lambda: running.counted > 5)
        yield running
        handle.finish(running.stream)
    finally:
        if follower is not None:
            follower.cancel()
        await handle.close()


async def test_long_prompt_is_prefilled_in_chunks_between_other_streams_tokens(
    tiny_model_factory: TinyModelFactory,
) -> None:
    async with loop_stream(tiny_model_factory, n_batch=32, max_tokens=1500) as running:
        handle = running.handle
        long = [{"role": "user", "content": text_of(500)}]  # about 500 tokens: 16 chunks of 32
        loading = handle.submit("chat", {"messages": long, "params": params(max_tokens=3).to_wire()})
        before = running.counted
        first = await handle.receive(loading)
        assert first["type"] == "delta"
        progress = running.produced() - before
        # Between prefill chunks the running stream got a decode step each and kept producing tokens ...
        assert progress >= 12, progress
        # ... and the running stream was neither cut nor made to wait for the whole prompt.
        assert not running.done.is_set()
        while not loading.finished:
            await handle.receive(loading)
        handle.finish(loading)


async def test_embeddings_beside_a_stream_go_in_small_batches_between_its_tokens(
    tiny_model_factory: TinyModelFactory,
) -> None:
    """A big embedding job must not stall running streams: it shares the loop with them, a small batch at a time."""
    async with loop_stream(tiny_model_factory, n_batch=64, max_tokens=1800) as running:
        handle = running.handle
        inputs = [text_of(40, seed) for seed in range(48)]  # 48 inputs of about 40 tokens
        embedding = handle.submit("embed", {"inputs": inputs})
        first = await handle.receive(embedding)
        assert first["type"] in ("started", "vector")
        before = running.produced()
        vectors = 0
        while not embedding.finished:
            message = await handle.receive(embedding)
            vectors += message["type"] == "vector"
        progress = running.produced() - before
        assert vectors >= 47 and not running.done.is_set()
        # One input per embedding batch, a stream token between batches; before, 16 inputs went in each batch
        # (about 640 tokens, seconds on a real model) and the stream got 3 tokens during the whole job.
        assert progress >= 40, progress
        handle.finish(embedding)


async def test_prefix_reuse_evaluates_only_the_new_part(runner: Runner) -> None:
    first_turn = [{"role": "user", "content": text_of(300)}]
    cold = await collect(runner.chat("ai/tiny", first_turn, params()))
    assert cold.usage.cached_tokens <= 2  # nothing cached but the shared start of the template
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": cold.text},
        {"role": "user", "content": "thanks"},
    ]
    warm = await collect(runner.chat("ai/tiny", second_turn, params()))
    assert warm.text == DEFAULT_REPLY
    # Everything of the first turn that the template renders the same way comes from the cache.
    assert warm.usage.cached_tokens >= cold.usage.prompt_tokens - 2
    assert warm.usage.prompt_tokens > cold.usage.prompt_tokens
    # A different conversation arriving meanwhile takes another slot and leaves that cache alone.
    other = await collect(runner.chat("ai/tiny", [{"role": "user", "content": text_of(200, seed=3)}], params()))
    assert other.usage.cached_tokens < 10
    again = await collect(runner.chat("ai/tiny", second_turn, params()))
    assert again.usage.cached_tokens == again.usage.prompt_tokens - 1  # the last token is evaluated for logits


async def test_n_choices_share_one_prompt_evaluation(runner: Runner) -> None:
    choices = await collect_choices(runner.chat("ai/loop", HI, params(n=3, max_tokens=6, temperature=1, seed=5)))
    assert len(choices) == 3
    for choice in choices:
        assert choice.finish_reason == "length" and choice.text.startswith("one")
    assert choices[0].usage.completion_tokens == 18
    plain = await collect(runner.chat("ai/tiny", HI, params()))
    multi = await collect_choices(runner.chat("ai/tiny", HI, params(n=4)))
    assert [c.text for c in multi] == [DEFAULT_REPLY] * 4
    assert multi[0].usage.prompt_tokens == plain.usage.prompt_tokens  # counted (and evaluated) once
    assert multi[0].usage.completion_tokens == 4 * len(reply_pieces(DEFAULT_REPLY))
    with pytest.raises(InvalidRequest) as info:
        await collect(runner.chat("ai/tiny", HI, params(n=5)))  # more than the 4 parallel sequences
    assert info.value.param == "n" and "parallel" in str(info.value)


async def test_grammar_per_sequence_and_a_refused_grammar_beside_them(runner: Runner) -> None:
    schema = {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "b", "schema": schema}}
    loop = runner.chat("ai/json", HI, params())
    forced, free, typed = await asyncio.gather(
        collect(runner.chat("ai/tiny", HI, params(response_format={"type": "json_object"}, max_tokens=8))),
        collect(runner.chat("ai/json", HI, params())),
        collect(runner.chat("ai/json", HI, params(response_format=fmt, max_tokens=30))),
    )
    await loop.aclose()  # type: ignore[attr-defined]
    assert forced.text.lstrip().startswith("{")
    assert json.loads(free.text) == {"a": 1}  # no grammar: the model's own answer
    assert list(json.loads(typed.text)) == ["b"]  # the schema's key, not the model's "a"
    refused = {"type": "json_object", "schema": {"type": "string", "maxLength": 5000}}
    running = runner.chat("ai/loop", HI, params(max_tokens=50))
    await running.__anext__()
    with pytest.raises(InvalidRequest) as info:
        await collect(runner.chat("ai/loop", HI, params(response_format=refused)))
    assert info.value.param == "response_format"
    answer = await collect(running)
    assert answer.usage.completion_tokens == 50


async def test_greedy_output_is_the_same_alone_or_beside_others(runner: Runner) -> None:
    prompts = [text_of(5 + 9 * i, seed=i) for i in range(8)]

    async def one(prompt: str) -> str:
        return (await collect(runner.complete("ai/mixing", prompt, params(temperature=0, max_tokens=40)))).text

    alone = [await one(p) for p in prompts]
    assert len(set(alone)) > 4  # the prompts really lead to different texts
    four = await asyncio.gather(*(one(p) for p in prompts[:4]))
    eight = await asyncio.gather(*(one(p) for p in prompts))  # four run, four wait and join as slots free
    assert list(four) == alone[:4]
    assert list(eight) == alone


async def test_worker_crash_with_several_sequences_in_flight(runner: Runner) -> None:
    streams = [runner.chat("ai/loop", HI, params()) for _ in range(3)]
    for stream in streams:
        await stream.__anext__()
    waiting = [asyncio.create_task(collect(runner.chat("ai/loop", HI, params()))) for _ in range(2)]
    await wait_until(lambda: runner.ps()[0].in_flight == 4 and runner.ps()[0].queued == 1)
    pid = runner.ps()[0].pid
    os.kill(pid, signal.SIGKILL)
    for stream in streams:
        with pytest.raises(WorkerCrashed, match="SIGKILL"):
            async for _ in stream:
                pass
    for task in waiting:
        with pytest.raises(WorkerCrashed):
            await task
    answer = await collect(runner.chat("ai/loop", HI, params(max_tokens=3)))
    assert answer.usage.completion_tokens == 3 and runner.ps()[0].pid != pid


async def test_ps_and_stats_show_sequences(runner: Runner) -> None:
    streams = [runner.chat("ai/loop", HI, params()) for _ in range(4)]
    for stream in streams:
        await stream.__anext__()
    extra = asyncio.create_task(collect(runner.chat("ai/loop", HI, params(max_tokens=2))))
    await wait_until(lambda: (runner.ps()[0].in_flight, runner.ps()[0].queued) == (4, 1))
    status = runner.ps()[0]
    assert status.parallel == 4 and status.threads >= 1
    await wait_until(lambda: runner.ps()[0].batch_fill > 0)  # the worker's statistics reach ps
    for stream in streams:
        await stream.aclose()  # type: ignore[attr-defined]
    assert (await extra).usage.completion_tokens == 2


async def test_threads_and_parallel_settings(store: Store) -> None:
    assert EngineSettings.from_env({"MR_NOTEBOOK_THREADS": "3", "MR_NOTEBOOK_PARALLEL": "2"}).threads == 3
    with pytest.raises(InvalidRequest):
        EngineSettings.from_env({"MR_NOTEBOOK_PARALLEL": "-1"})
    physical = psutil.cpu_count(logical=False) or 1
    assert default_threads() == max(1, min(physical, len(os.sched_getaffinity(0))))
    runner = Runner(store, EngineSettings(keep_alive=30, parallel=2))
    try:
        status = await runner.load("ai/tiny")
        assert (status.threads, status.parallel) == (default_threads(), 2)
        store.configure("ai/loop", threads=1, parallel=3)  # a model's own settings win over the global ones
        status = await runner.load("ai/loop")
        assert (status.threads, status.parallel) == (1, 3)
        streams = [runner.chat("ai/loop", HI, params()) for _ in range(4)]
        for stream in streams[:3]:
            await stream.__anext__()
        waiting = asyncio.create_task(streams[3].__anext__())  # type: ignore[arg-type]
        await wait_until(lambda: runner.sequences()["ai/loop:latest"]["queued"] == 1)
        await wait_until(lambda: runner.sequences()["ai/loop:latest"]["batch_fill"] > 0)
        metrics = Metrics()
        text = metrics.render(len(runner.ps()), runner.queue_depth, runner.sequences).decode()
        assert 'mr_notebook_active_sequences{model="ai/loop:latest"} 3.0' in text
        assert 'mr_notebook_waiting_requests{model="ai/loop:latest"} 1.0' in text
        assert "mr_notebook_batch_fill" in text
        for stream in streams[:3]:
            await stream.aclose()  # type: ignore[attr-defined]
        assert (await waiting).text
        await streams[3].aclose()  # type: ignore[attr-defined]
    finally:
        await runner.close()


def test_decode_threads_give_way_to_other_processes() -> None:
    """Under other processes' load the worker decodes with the cores left (llama.cpp threads stall otherwise)."""
    from mr_notebook.engine.llama.cores import CoreShare, threads_for

    assert threads_for(2, 2, 0.2) == 2  # our own server and client barely count
    assert threads_for(2, 2, 0.7) == 1
    assert threads_for(4, 8, 5.6) == 2
    assert threads_for(4, 2, 3.0) == 1  # never fewer than one
    assert threads_for(2, 16, 0.0) == 2  # never more than the setting

    share = CoreShare(2)
    share.cpus = 2  # judge as a 2-core machine whatever runs the test
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        deadline = time.monotonic() + 10
        while share.current == 2 and time.monotonic() < deadline:
            share.check()
            time.sleep(0.1)
        assert share.current == 1
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
