"""The extension in real kernels: an ipykernel on its own (in-kernel engine) and kernels of a real Jupyter
server with the server extension (remote engine shared with external clients)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.registry import free_port

LOOP = "one two three "
TOKEN = "test-token-6f1e"
# Only ours: the other installed server extensions (JupyterLab …) would only slow the start down.
EXTENSIONS = "{'mr_notebook': True, 'jupyterlab': False, 'jupyter_lsp': False, 'notebook_shim': False}"


def execute(kc: BlockingKernelClient, code: str, timeout: float = 120) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``code``; (execute_reply content, iopub messages of this request)."""
    msg_id = kc.execute(code)
    return _collect(kc, msg_id, timeout)


def _collect(kc: BlockingKernelClient, msg_id: str, timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    deadline = time.monotonic() + timeout
    messages: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            while True:  # replies to earlier requests (kernel_info of wait_for_ready …) may come first
                reply = kc.get_shell_msg(timeout=10)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply["content"], messages
        messages.append(msg)
    raise AssertionError(f"no answer to {msg_id} within {timeout}s")


def text_of(messages: list[dict[str, Any]]) -> str:
    """Everything a cell showed, as text (streams, display data and their updates, errors)."""
    parts = []
    for msg in messages:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            parts.append(content["text"])
        elif msg["msg_type"] in ("display_data", "update_display_data", "execute_result"):
            parts.append(content["data"].get("text/plain", ""))
        elif msg["msg_type"] == "error":
            parts.append("\n".join(content["traceback"]))
    return "".join(parts)


def interrupt_while_streaming(
    kc: BlockingKernelClient, code: str, interrupt: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start ``code``, wait until a reply is streaming into the output, then ``interrupt()`` (the Stop button)."""
    msg_id = kc.execute(code)
    deadline = time.monotonic() + 60
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            seen.append(msg)
            if msg["msg_type"] in ("update_display_data", "stream"):
                break
    else:
        raise AssertionError("the reply never started streaming")
    time.sleep(0.3)
    interrupt()
    reply, rest = _collect(kc, msg_id, 30)
    return reply, seen + rest


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("kernel") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=LOOP, never_stop=True, context_length=8192), "ai/loop")
    return home


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
    env["MR_NOTEBOOK_HOME"] = str(home)
    return env


def test_interrupting_a_kernel_stops_the_in_kernel_generation(home: Path, tmp_path: Path) -> None:
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=_clean_env(home), cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply, _ = execute(kc, "%load_ext mr_notebook")
        assert reply["status"] == "ok"
        reply, messages = interrupt_while_streaming(kc, "%%chat -m ai/loop\nCount forever", km.interrupt_kernel)
        shown = text_of(messages)
        assert reply["status"] == "error" and reply["ename"] == "GenerationStopped", (reply, shown[-500:])
        assert "one two" in shown and "*[stopped]*" in shown and "Traceback" not in shown
        # Sanitised Markdown (HTML) updated in place: one display, then updates of the same display id.
        displays = [m for m in messages if m["msg_type"] == "display_data"]
        updates = [m for m in messages if m["msg_type"] == "update_display_data"]
        assert len(displays) == 1 and updates
        assert "text/html" in displays[0]["content"]["data"]
        display_id = displays[0]["content"]["transient"]["display_id"]
        assert {m["content"]["transient"]["display_id"] for m in updates} == {display_id}
        # The worker stopped generating: nothing in flight, and the next request is served at once.
        check = (
            "import time\nfrom mr_notebook.kernel import kernel_state\nengine = kernel_state(get_ipython()).engine\n"
            "for _ in range(200):\n    busy = [(e['in_flight'], e['queued']) for e in engine.ps()]\n"
            "    if busy == [(0, 0)]: break\n    time.sleep(0.05)\nprint('BUSY', busy)"
        )
        reply, messages = execute(kc, check)
        assert "BUSY [(0, 0)]" in text_of(messages)
        reply, messages = execute(kc, "%%chat -m ai/loop --max-tokens 3\nAgain")
        assert reply["status"] == "ok" and "one two" in text_of(messages)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def jupyter(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `jupyter server` with the extension, its own runtime folder, and a known token."""
    root = tmp_path_factory.mktemp("jupyter")
    port = free_port()
    env = _clean_env(home)
    env.update(JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            f"--port={port}",
            "--ip=127.0.0.1",
            "--no-browser",
            f"--IdentityProvider.token={TOKEN}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
            f"--ServerApp.jpserver_extensions={EXTENSIONS}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/"
    headers = {"Authorization": f"token {TOKEN}"}
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "api/status", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("jupyter server did not start")
        time.sleep(0.2)
    yield {"url": url, "headers": headers, "runtime": root / "runtime", "pid": process.pid}
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_kernel(jupyter: dict[str, Any]) -> tuple[str, BlockingKernelClient]:
    """A kernel started by the server (as JupyterLab does), reached through its connection file."""
    answer = httpx.post(jupyter["url"] + "api/kernels", headers=jupyter["headers"], json={"name": "python3"})
    kernel_id = answer.json()["id"]  # the server answers once the kernel process runs and its ports are known
    kc = BlockingKernelClient(connection_file=str(jupyter["runtime"] / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    # Ready means: it answers kernel_info. Without a kernel manager a client would otherwise judge the kernel by
    # its heartbeat and call it dead when the first beat is late on a loaded machine; the server watches the
    # process, so no heartbeat channel here. (Waiting for the server's execution_state instead took ~60 s per
    # kernel: it stays "starting" until a browser's websocket connects.)
    kc.start_channels(hb=False)
    kc.wait_for_ready(timeout=60)
    return kernel_id, kc


def test_server_kernels_and_external_clients_share_one_loaded_model(jupyter: dict[str, Any]) -> None:
    kernel_id, kc = server_kernel(jupyter)
    mr = jupyter["url"] + "mr/"
    try:
        reply, messages = execute(kc, "%load_ext mr_notebook\n%model status")
        shown = text_of(messages)
        assert "remote engine" in shown and "MR_NOTEBOOK_URL" in shown and f"{mr}v1" in shown
        reply, messages = execute(kc, "%model run ai/tiny")
        assert reply["status"] == "ok", text_of(messages)
        reply, messages = execute(kc, "%%chat\nHello from the kernel")
        assert reply["status"] == "ok" and DEFAULT_REPLY in text_of(messages)

        # An external client, with the Jupyter token as its API key, reaches the same engine.
        client = openai.OpenAI(base_url=mr + "v1", api_key=TOKEN)
        answer = client.chat.completions.create(model="ai/tiny", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == DEFAULT_REPLY
        ps = httpx.get(mr + "engines/ps", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert len(ps) == 1 and ps[0]["model"] == "ai/tiny:latest"
        # The one worker belongs to the server, not the kernel, and the kernel never imported llama.cpp.
        worker = psutil.Process(ps[0]["pid"])
        assert worker.ppid() == jupyter["pid"]
        reply, messages = execute(
            kc,
            "import os, sys\nprint('LLAMA', 'llama_cpp' in sys.modules, 'mr_notebook.engine' in sys.modules)\n"
            "print('KERNEL', os.getpid())\nimport mr_notebook\nprint('BASE', mr_notebook.endpoint()[0])",
        )
        shown = text_of(messages)
        assert "LLAMA False False" in shown and f"BASE {mr}v1" in shown
        kernel_pid = int(shown.split("KERNEL ")[1].split()[0])
        assert worker.pid not in {p.pid for p in psutil.Process(kernel_pid).children(recursive=True)}

        # The Stop button (interrupt through the server) ends the generation on the server too.
        def stop() -> None:
            httpx.post(jupyter["url"] + f"api/kernels/{kernel_id}/interrupt", headers=jupyter["headers"])

        reply, messages = interrupt_while_streaming(kc, "%%chat -m ai/loop\nCount forever", stop)
        assert reply["status"] == "error" and reply["ename"] == "GenerationStopped"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = httpx.get(mr + "engines/ps", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            busy = {r["model"]: (r["in_flight"], r["queued"]) for r in rows}
            if busy.get("ai/loop:latest") == (0, 0):
                break
            time.sleep(0.05)
        assert busy["ai/loop:latest"] == (0, 0)
    finally:
        kc.stop_channels()
        httpx.delete(jupyter["url"] + f"api/kernels/{kernel_id}", headers=jupyter["headers"])


def test_extension_publishes_the_endpoint_to_kernels(jupyter: dict[str, Any]) -> None:
    kernel_id, kc = server_kernel(jupyter)
    try:
        reply, messages = execute(
            kc,
            "import os, json\nprint(json.dumps([os.environ.get('MR_NOTEBOOK_URL'), "
            "os.environ.get('MR_NOTEBOOK_TOKEN')]))",
        )
        assert reply["status"] == "ok"
        url, token = json.loads(text_of(messages).strip())
        assert url == jupyter["url"] + "mr/" and token == TOKEN
    finally:
        kc.stop_channels()
        httpx.delete(jupyter["url"] + f"api/kernels/{kernel_id}", headers=jupyter["headers"])


def test_workflows_in_a_server_kernel(jupyter: dict[str, Any]) -> None:
    """map, side-by-side replies and provenance through the server's engine (the kernel loads no model)."""
    kernel_id, kc = server_kernel(jupyter)
    try:
        reply, messages = execute(
            kc,
            "%load_ext mr_notebook\nimport mr_notebook, sys\n"
            "out = mr_notebook.map('Say {}', ['a', 'b', 'c'], model='ai/tiny', progress=False, cache=False)\n"
            f"print('MAP', list(out) == [{DEFAULT_REPLY!r}] * 3, out.errors, out.provenance['engine']['mode'], "
            "out.stats['sent'])\nprint('LLAMA', 'llama_cpp' in sys.modules)",
        )
        shown = text_of(messages)
        assert reply["status"] == "ok", shown
        assert "MAP True [] remote 3" in shown and "LLAMA False" in shown
        reply, messages = execute(kc, "%%chat --models ai/tiny,ai/loop --max-tokens 6\nHi")
        assert reply["status"] == "ok", text_of(messages)
        final = [m for m in messages if m["msg_type"] in ("display_data", "update_display_data")][-1]["content"]
        provenance = final["metadata"]["mr_notebook"]["provenance"]
        assert [p["model"] for p in provenance] == ["ai/tiny", "ai/loop"]
        assert all(p["engine"]["mode"] == "remote" and p["digest"].startswith("sha256:") for p in provenance)
        assert "one two" in final["data"]["text/plain"] and DEFAULT_REPLY in final["data"]["text/plain"]
    finally:
        kc.stop_channels()
        httpx.delete(jupyter["url"] + f"api/kernels/{kernel_id}", headers=jupyter["headers"])
