"""How fast the magics are where users feel it: `%load_ext mr_notebook` and `%model list` with 100 models.

Each measurement runs in a fresh process (imports are what cost), several times; the median is shown:
in a real ipykernel (what notebook users run: asyncio, zmq … are already imported there) and in a plain
terminal-style InteractiveShell (which has imported less, so pays for more).
Goals (issue 6): load_ext adds <= 150 ms, `%model list` with 100 stored models <= 100 ms.

    .venv/bin/python bench/magics.py [--runs 7] [--models 100]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from mr_notebook.store import Store
from mr_notebook.testing import build_tiny_model

PROBE = textwrap.dedent("""
    import json, sys, time
    from IPython import get_ipython
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    shell = InteractiveShell.instance() if get_ipython() is None else get_ipython()
    t0 = time.perf_counter()
    shell.run_line_magic("load_ext", "mr_notebook")
    t1 = time.perf_counter()
    with capture_output():
        first = shell.run_line_magic("model", "list")
    t2 = time.perf_counter()
    warm = []
    for _ in range(10):
        start = time.perf_counter()
        with capture_output():
            rows = shell.run_line_magic("model", "list")
            repr(rows)
            rows._repr_html_()
        warm.append(time.perf_counter() - start)
    heavy = [m for m in ("llama_cpp", "mr_notebook.engine") if m in sys.modules]
    print(json.dumps({"load_ext": t1 - t0, "list_first": t2 - t1, "list_warm": sorted(warm)[5],
                      "models": len(first), "heavy_modules": heavy}))
""")


def make_store(home: Path, count: int) -> None:
    """``count`` models: a few distinct tiny GGUF files, each shared by many models (like hard links)."""
    store = Store(home)
    files = []
    for seed in range(5):
        path = build_tiny_model(home.parent / f"tiny-{seed}.gguf", seed=seed, reply=f"Model {seed} says hi.")
        files.append(store.add_blob_file(path))
    for i in range(count):
        entry = files[i % len(files)]
        store.create_model([f"bench/model-{i:03d}:v1"], [entry], model_id="sha256:" + f"{i:064x}")


def probe_shell(env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def probe_kernel(env: dict[str, str]) -> dict[str, float]:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env)
    kc = km.client()
    kc.start_channels()
    lines: list[dict[str, Any]] = []
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive(PROBE, timeout=120, output_hook=lines.append)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"probe failed in the kernel: {reply['content']}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    text = "".join(m["content"].get("text", "") for m in lines if m["msg_type"] == "stream")
    result: dict[str, float] = json.loads(text.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--models", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        make_store(home, args.models)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
        env["MR_NOTEBOOK_HOME"] = str(home)
        results = {}
        for where, probe in (("ipykernel", probe_kernel), ("terminal InteractiveShell", probe_shell)):
            results[where] = [probe(env) for _ in range(args.runs)]
    for where, runs in results.items():
        if any(r["models"] != args.models for r in runs):
            raise RuntimeError(f"expected {args.models} models: {runs}")
        print(f"{where}: {args.runs} fresh processes, {args.models} stored models, in-kernel engine (median):")
        for key, label, goal in (
            ("load_ext", "%load_ext mr_notebook", 0.150),
            ("list_first", "%model list, first call (connect + store)", 0.100),
            ("list_warm", "%model list, later calls (+ text and HTML)", 0.100),
        ):
            value = statistics.median(r[key] for r in runs)
            verdict = "ok" if value <= goal else "MISSED"
            print(f"  {label:<46} {value * 1000:7.1f} ms   goal <= {goal * 1000:.0f} ms   {verdict}")
        print(f"  modules imported by load_ext + list: {runs[0]['heavy_modules'] or 'no llama_cpp, no engine'}")


if __name__ == "__main__":
    main()
