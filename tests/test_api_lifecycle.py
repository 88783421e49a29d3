"""Disconnects, worker crashes, shutdown and the in-kernel server, through real HTTP."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from test_api_support import (
    LONG,
    MODEL,
    REPLY,
    ServerProcess,
    StreamInThread,
    chat_body,
    fill_store,
    pid_alive,
    wait_until,
)

from mr_notebook.api.standalone import start_in_thread
from mr_notebook.engine import SyncRunner
from mr_notebook.settings import read_runtime_file
from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import TinyModelFactory


@pytest.fixture
def server(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> Iterator[ServerProcess]:
    fill_store(tmp_path / "home", tiny_model_factory)
    process = ServerProcess(tmp_path / "home")
    yield process
    process.stop()


def long_row(server: ServerProcess) -> dict[str, object]:
    return next(r for r in server.ps() if r["model"] == LONG)


def test_disconnect_cancels_generation(server: ServerProcess) -> None:
    # LONG never stops (65536-token context): only the disconnect can end this stream.
    stream = StreamInThread(server.url, chat_body(LONG, stream=True)).start()
    assert stream.first_line.wait(60)
    assert long_row(server)["in_flight"] == 1
    stream.close()
    wait_until(lambda: long_row(server)["in_flight"] == 0, message="the generation to stop")
    # The worker serves the next request (it would wait behind the endless one otherwise).
    answer = httpx.post(server.url + "v1/chat/completions", json=chat_body(LONG, max_tokens=3), timeout=60).json()
    assert answer["choices"][0]["finish_reason"] == "length"


def test_disconnect_of_a_non_streaming_request(server: ServerProcess) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "v1/chat/completions", json=chat_body(LONG), timeout=3)
    # On a busy machine the model may still be loading when the client gives up; the load goes on.
    stopped = lambda: any(r["model"] == LONG and r["in_flight"] == 0 for r in server.ps())  # noqa: E731
    wait_until(stopped, message="the generation to stop")
    answer = httpx.post(server.url + "v1/chat/completions", json=chat_body(LONG, max_tokens=2), timeout=60).json()
    assert answer["usage"]["completion_tokens"] == 2


def test_worker_crash_mid_stream(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=server.url + "v1", api_key="x", max_retries=0, timeout=60)
    stream = client.chat.completions.create(model=LONG, messages=[{"role": "user", "content": "go"}], stream=True)
    pieces = iter(stream)
    next(pieces)
    pid = long_row(server)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as info:
        for _ in pieces:
            pass
    assert LONG in info.value.message and "SIGKILL" in info.value.message
    # The runner stays healthy: the next request starts a fresh worker.
    answer = client.chat.completions.create(model=LONG, messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert answer.choices[0].finish_reason == "length"
    assert long_row(server)["pid"] != pid


def test_crash_before_the_first_token_is_502(server: ServerProcess) -> None:
    # The worker decodes 4 requests at once (its parallel setting): a fifth waits for a free slot.
    busy = [StreamInThread(server.url, chat_body(LONG, stream=True)).start() for _ in range(4)]
    assert all(stream.first_line.wait(60) for stream in busy)
    waiting = StreamInThread(server.url, chat_body(LONG, stream=True)).start()  # queued behind `busy`
    wait_until(lambda: long_row(server)["queued"] == 1, message="a queued request")
    pid = long_row(server)["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    for stream in busy:
        stream.close()
    waiting.close()
    # It had not started streaming, so it gets a real HTTP status and OpenAI's error shape.
    assert waiting.status == 502
    assert json.loads(waiting.lines[0])["error"]["code"] == "worker_crashed"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_ends_workers_and_runtime_file(server: ServerProcess, sig: int) -> None:
    assert httpx.post(server.url + "v1/chat/completions", json=chat_body(), timeout=60).is_success
    stream = StreamInThread(server.url, chat_body(LONG, stream=True)).start()
    assert stream.first_line.wait(60)
    pids = [int(str(row["pid"])) for row in server.ps()]
    assert len(pids) == 2 and read_runtime_file(server.home) is not None
    assert server.stop(sig) == 0
    stream.close()
    assert not (server.home / "run" / "server.json").exists()
    wait_until(lambda: not any(pid_alive(p) for p in pids), message="the workers to end")


def test_runtime_file_contents(server: ServerProcess) -> None:
    data = read_runtime_file(server.home)
    assert data == {"url": server.url, "pid": server.proc.pid, "auth": False}
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith("/")


def test_start_in_thread_serves_the_kernel_runner(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    store = fill_store(tmp_path / "home", tiny_model_factory)
    runner = SyncRunner(store)
    try:
        handle = start_in_thread(runner, store)
        try:
            client = openai.OpenAI(base_url=handle.url + f"engines/{MODEL}/v1", api_key="x", max_retries=0)
            answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content == REPLY
            # Same Runner: the model the HTTP request loaded is the kernel's.
            assert [s.model for s in runner.ps()] == [MODEL]
            assert httpx.get(handle.url + "engines/status", timeout=10).json()["mode"] == "kernel"
        finally:
            handle.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(handle.url + "health", timeout=5)
        assert runner.ps()[0].model == MODEL  # stopping the endpoint leaves the kernel's models loaded
    finally:
        runner.close()
    assert Store(store.home).get(MODEL).name == MODEL


def worker_pids(server: ServerProcess) -> set[int]:
    found = set()
    for child in psutil.Process(server.proc.pid).children():
        try:
            if "mr_notebook.engine.worker" in " ".join(child.cmdline()) and pid_alive(child.pid):
                found.add(child.pid)
        except psutil.Error:
            pass
    return found


def test_a_load_belongs_to_the_server_and_shutdown_ends_it(server: ServerProcess) -> None:
    # A client that goes away during a streamed load does not cancel it: the model shows up in ps.
    with httpx.stream("POST", server.url + "engines/load", json={"model": LONG, "stream": True}, timeout=60) as first:
        assert json.loads(next(first.iter_lines()))["status"] == "loading"
    wait_until(lambda: any(row["model"] == LONG for row in server.ps()), message="the load to finish")
    # A shutdown while another model loads ends that worker too: no process outlives the server.
    before = worker_pids(server)
    with httpx.stream("POST", server.url + "engines/load", json={"model": MODEL, "stream": True}, timeout=60) as second:
        assert json.loads(next(second.iter_lines()))["status"] == "loading"
        wait_until(lambda: bool(worker_pids(server) - before), message="the worker to start")
        pids = worker_pids(server)
        assert server.stop() == 0
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), message="every worker to end")
