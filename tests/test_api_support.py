"""Shared helpers for the API tests: a store with tiny models, a real `serve()` in a subprocess.

Imported by the other test_api*/test_seed_article modules (no tests of its own).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import DEFAULT_REPLY, TinyModelFactory

MODEL = "ai/llama3.2:1B-Q8_0"  # the seed article's model name, on a tiny model
NEVER = "ai/never:latest"  # repeats forever (until max_tokens or the context is full)
EMBED = "ai/embed:latest"  # mean pooling
LONG = "ai/long:latest"  # never stops, 65536-token context: streams until the client goes away
REPLY = DEFAULT_REPLY
SERVE_CODE = "from mr_notebook.api.standalone import serve; serve(host={host!r}, port=0)"


def fill_store(home: Path, factory: TinyModelFactory) -> Store:
    store = Store(home)
    store.import_gguf(factory(), MODEL)
    store.import_gguf(factory(never_stop=True, reply="la "), NEVER)
    store.import_gguf(factory(pooling="mean"), EMBED)
    add_long_model(store, factory)
    return store


def add_long_model(store: Store, factory: TinyModelFactory) -> None:
    store.import_gguf(factory(never_stop=True, reply="la ", context_length=65536), LONG)
    store.configure(LONG, context_size=65536)


class ServerProcess:
    """`serve()` running in a child process; ``url`` ends with ``/``."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.home = home
        self.log_path = home / "serve.log"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
        full_env.update({"MR_NOTEBOOK_HOME": str(home), "MR_NOTEBOOK_KEEP_ALIVE": "5m", **(env or {})})
        home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE_CODE.format(host=host)], env=full_env, stdout=log, stderr=log
            )
        self.url = self._wait_for_runtime_file()

    def _wait_for_runtime_file(self, timeout: float = 60.0) -> str:
        path = self.home / "run" / "server.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve() exited with {self.proc.returncode}:\n{self.log()}")
            try:
                data = json.loads(path.read_text())
                if data["pid"] == self.proc.pid:
                    return str(data["url"])
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"serve() did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def ps(self) -> list[dict[str, object]]:
        rows = httpx.get(self.url + "engines/ps", timeout=10).json()
        assert isinstance(rows, list)
        return rows


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False


def wait_until(predicate: object, timeout: float = 30.0, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


@pytest.fixture(scope="module")
def api_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("api_home")
    fill_store(home, tiny_model_factory)
    return home


@pytest.fixture(scope="module")
def api_server(api_home: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(api_home)
    yield server
    server.stop()


def chat_body(model: str = MODEL, content: str = "Hello?", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


class StreamInThread:
    """A streaming request read line by line on a thread; ``close()`` disconnects the client."""

    def __init__(self, url: str, body: dict[str, object], path: str = "v1/chat/completions") -> None:
        self.first_line = threading.Event()
        self.lines: list[str] = []
        self.status = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url + path, body), daemon=True)

    def start(self) -> StreamInThread:
        self._thread.start()
        return self

    def _run(self, url: str, body: dict[str, object]) -> None:
        with httpx.stream("POST", url, json=body, timeout=60) as response:
            self.status = response.status_code
            for line in response.iter_lines():
                if line:
                    self.lines.append(line)
                    self.first_line.set()
                if self._stop.is_set():
                    break

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
