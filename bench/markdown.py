"""What showing a model's reply costs, per render, in the kernel and in the chat widget.

Kernel: ``markdown_html`` (markdown-it-py, our checks, nh3) against the same markdown-it-py parser rendering
alone, the baseline, in this process. Widget: ``markdownToHtml`` from the bundled markdown.js against its
markdown-it rendering alone, in node (DOMPurify needs a browser and is not counted). Inputs: ordinary replies
and hostile ones (issue 10: 20,000 nested ``>``; ``**a `` x 20,000, which cost 1.3 s per render, on every
streamed token, in the previous hand-written widget renderer). The median of several runs is shown.

    .venv/bin/python bench/markdown.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mr_notebook.kernel.display import _markdown, markdown_html
from mr_notebook.widgets._common import MARKDOWN_LIBRARIES, bundle

ORDINARY = "Some *text* with **bold**, `code` and a [link](https://example.com).\n\n- item\n- item\n\n"
INPUTS = {
    "ordinary reply, 2 KB": ORDINARY * 25,
    "ordinary reply, 100 KB": ORDINARY * 1250,
    "20,000 nested >": ">" * 20_000 + " hi",
    "**a x 20,000": "**a " * 20_000,
    "[a x 20,000": "[a" * 20_000,
    "[a x 50,000 (100 KB)": "[a" * 50_000,
    "table, 500 columns x 50 rows": "|" + "a|" * 500 + "\n|" + "-|" * 500 + "\n" + ("|" + "x|" * 500 + "\n") * 50,
}

NODE_RUNNER = """
import { readFileSync } from 'node:fs';
import { markdownToHtml, md } from './markdown.mjs';
const { inputs, runs } = JSON.parse(readFileSync(0, 'utf8'));
const time = (fn, source) => {
  fn(source);
  const times = [];
  for (let i = 0; i < runs; i++) { const t = performance.now(); fn(source); times.push(performance.now() - t); }
  return times.sort((a, b) => a - b)[Math.floor(runs / 2)];
};
const out = {};
for (const [name, source] of Object.entries(inputs)) {
  out[name] = [time(markdownToHtml, source), time((s) => md.render(s), source)];
}
process.stdout.write(JSON.stringify(out));
"""


def median_ms(fn: Callable[[str], object], source: str, runs: int) -> float:
    fn(source)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(source)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def widget_times(runs: int) -> dict[str, list[float]]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is needed for the widget half (apt-get install nodejs)")
    with tempfile.TemporaryDirectory() as folder:
        module = Path(folder) / "markdown.mjs"
        module.write_text(bundle("markdown.js", libraries=MARKDOWN_LIBRARIES) + "\nexport { markdownToHtml, md };\n")
        (Path(folder) / "run.mjs").write_text(NODE_RUNNER)
        done = subprocess.run(
            [node, str(Path(folder) / "run.mjs")],
            input=json.dumps({"inputs": INPUTS, "runs": runs}),
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    result: dict[str, list[float]] = json.loads(done.stdout)
    return result


ROW = "{:30} {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    md = _markdown()
    widget = widget_times(runs)
    print(ROW.format("input", "kernel ms", "baseline", "ratio", "widget ms", "baseline", "ratio"))
    for name, source in INPUTS.items():
        ours, base = median_ms(markdown_html, source, runs), median_ms(md.render, source, runs)
        w_ours, w_base = widget[name]
        cells = [f"{ours:.1f}", f"{base:.1f}", f"{ours / base:.2f}", f"{w_ours:.1f}", f"{w_base:.1f}"]
        print(ROW.format(name, *cells, f"{w_ours / w_base:.2f}"))


if __name__ == "__main__":
    main()
