"""Pull throughput versus curl, same blob, same local registry (Debian's docker-registry).

    .venv/bin/python bench/pull.py [--size-mb 200] [--runs 3]

Pushes a GGUF-header-prefixed random blob as ``ai/bench:v1``, then alternates ``curl -o FILE`` of the blob URL
and ``pull()`` into a fresh store, and prints the best MB/s of each and their ratio (goal: pull ≥ 90% of curl),
then the medians. curl only writes the file; pull also resolves the manifest, hashes, fsyncs (the blob is
durable before it becomes visible) and reads the GGUF metadata.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from mr_notebook.store import Store
from mr_notebook.store.pull import pull
from mr_notebook.testing import build_tiny_model
from mr_notebook.testing.registry import LocalRegistry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mr-bench-pull-") as tmp:
        root = Path(tmp)
        model = root / "tiny.gguf"
        build_tiny_model(model)
        data = model.read_bytes() + random.Random(0).randbytes(args.size_mb * 1024 * 1024)
        size = len(data)
        with LocalRegistry(root / "registry") as registry:
            registry.push_model("ai/bench", "v1", [data])
            del data
            record = pull(Store(root / "warm"), f"{registry.host}/ai/bench:v1").record
            digest = record.files[0].digest
            url = f"{registry.url}/v2/ai/bench/blobs/{digest}"
            curl_times, pull_times = [], []
            for run in range(args.runs):
                target = root / f"curl-{run}.bin"
                started = time.perf_counter()
                subprocess.run(["curl", "-sSf", "-o", str(target), url], check=True)
                curl_times.append(time.perf_counter() - started)
                target.unlink()
                home = root / f"store-{run}"
                started = time.perf_counter()
                result = pull(Store(home), f"{registry.host}/ai/bench:v1")
                pull_times.append(time.perf_counter() - started)
                if result.downloaded != size:
                    raise SystemExit(f"pull downloaded {result.downloaded} bytes, expected {size}")
                shutil.rmtree(home)
    mb = size / 1e6
    curl_best, pull_best = mb / min(curl_times), mb / min(pull_times)
    print(f"blob: {mb:.1f} MB, runs: {args.runs}")
    print(f"curl : best {curl_best:7.1f} MB/s  (times {', '.join(f'{t:.3f}s' for t in curl_times)})")
    print(f"pull : best {pull_best:7.1f} MB/s  (times {', '.join(f'{t:.3f}s' for t in pull_times)})")
    print(f"pull / curl: {pull_best / curl_best:.1%} (goal >= 90%; pull includes resolve, sha256 and commit)")
    # Best-of hides a slow run; the median shows how steady each side is (the disk's writeback varies).
    curl_median, pull_median = mb / statistics.median(curl_times), mb / statistics.median(pull_times)
    print(f"medians: curl {curl_median:7.1f} MB/s, pull {pull_median:7.1f} MB/s ({pull_median / curl_median:.1%})")


if __name__ == "__main__":
    main()
