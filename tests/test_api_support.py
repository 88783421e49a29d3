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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
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


def child_env(home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A server's environment: ours without MR_NOTEBOOK_* settings, then its store and ``env``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
    full_env.update({"MR_NOTEBOOK_HOME": str(home), "MR_NOTEBOOK_KEEP_ALIVE": "5m", **(env or {})})
    return full_env


class ServerProcess:
    """`serve()` running in a child process; ``url`` (the API root) ends with ``/``; clients send ``key``."""

    def __init__(self, home: Path, env: Mapping[str, str] | None = None, host: str = "127.0.0.1") -> None:
        self.home = home
        self.name = "serve"
        self.log_path = home / "serve.log"
        #: Without MR_NOTEBOOK_API_KEY the server takes any key (the SDKs insist on sending one).
        self.key = (env or {}).get("MR_NOTEBOOK_API_KEY", "unused")
        home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SERVE_CODE.format(host=host)], env=child_env(home, env), stdout=log, stderr=log
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

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def ps(self) -> list[dict[str, object]]:
        rows = httpx.get(self.url + "engines/ps", headers=self.headers, timeout=10).json()
        assert isinstance(rows, list)
        return rows


class JupyterProcess(ServerProcess):
    """A real `jupyter server` with the extension serving ``home``: ``url`` is ``…/mr/``, ``key`` its token."""

    TOKEN = "mr-notebook-test-token"
    EXTENSIONS = "{'mr_notebook': True, 'jupyterlab': False, 'jupyter_lsp': False, 'notebook_shim': False}"

    def __init__(self, home: Path, root: Path, timeout: float = 60.0) -> None:
        self.home, self.name, self.key = home, "jupyter", self.TOKEN
        self.log_path = root / "jupyter.log"
        runtime = root / "runtime"
        env = child_env(home, {"JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(root / "cfg")})
        # Port 0: the server picks a free one and writes it to its runtime file (no race for a port).
        command = [sys.executable, "-m", "jupyter_server", "--port=0", "--ip=127.0.0.1", "--no-browser"]
        command += [f"--IdentityProvider.token={self.TOKEN}", f"--ServerApp.root_dir={root}", "--allow-root"]
        command += [f"--ServerApp.jpserver_extensions={self.EXTENSIONS}"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self.url = ""
        deadline = time.monotonic() + timeout
        while not self._answers(runtime / f"jpserver-{self.proc.pid}.json"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"jupyter server did not start:\n{self.log()}")
            time.sleep(0.1)

    def _answers(self, runtime_file: Path) -> bool:
        try:
            self.url = self.url or str(json.loads(runtime_file.read_text())["url"]) + "mr/"
            return httpx.get(self.url + "engines/status", headers=self.headers, timeout=2).status_code == 200
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            return False


@contextmanager
def serving(server: ServerProcess) -> Iterator[ServerProcess]:
    """``server`` until the block ends (stopped on every path)."""
    try:
        yield server
    finally:
        server.stop()


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


def filled_home(
    tmp_path_factory: pytest.TempPathFactory, factory: TinyModelFactory, fill: Callable[[Path, TinyModelFactory], Store]
) -> Path:
    """A fresh store home that ``fill`` stocks with tiny models (the API and protocol tests' homes)."""
    home = tmp_path_factory.mktemp(fill.__name__.removeprefix("fill_"))
    fill(home, factory)
    return home


@pytest.fixture(scope="module")
def api_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    return filled_home(tmp_path_factory, tiny_model_factory, fill_store)


@pytest.fixture(scope="module")
def api_server(api_home: Path) -> Iterator[ServerProcess]:
    with serving(ServerProcess(api_home)) as server:
        yield server


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
