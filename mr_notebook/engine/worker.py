"""A model's worker process: ``python -m mr_notebook.engine.worker --fd N``.

The only place llama_cpp is imported. The host (:class:`~mr_notebook.engine.handle.WorkerHandle`) talks to
it over a socketpair whose worker end is fd ``N`` (not stdout: llama.cpp may write there). Messages are JSON
objects, one per line, multiplexed by request ``id`` so that a scheduler advancing several sequences per
``llama_decode`` (continuous batching) can arrive later without a protocol change.

Host → worker::

    {"op": "load", "config": {"path", "name", "n_ctx", "gpu_layers", "threads", "parallel", "n_batch",
                              "chat_template", "pooling", "context_length"}}     first message, once
    {"op": "chat", "id": ID, "messages": [...], "params": {...}}               queued (params.tools,
                                                        tool_choice, chat_template_kwargs reach the template)
    {"op": "complete", "id": ID, "prompt": "..." or [token ids], "params": {...}}  queued
    {"op": "embed", "id": ID, "inputs": ["..." or [token ids], ...]}            queued
    {"op": "tokenize", "id": ID, "text": "..."}                                 answered at once
    {"op": "detokenize", "id": ID, "tokens": [...]}                             answered at once
    {"op": "cancel", "id": ID}                 stop that request (queued: dropped; running: before the next step)
    {"op": "shutdown"}                         exit now

Worker → host::

    {"type": "ready", "pid", "n_ctx", "gpu_layers", "n_vocab", "threads", "parallel"}
                                                            after load; or an "error" without id, then exit 1
    {"type": "stats", "active", "queued", "batch_fill", "decodes", "embedding", "embedded"}
                                                            scheduler statistics while busy
    {"id", "type": "started", "prompt_tokens"}              the request got its sequence slot(s)
    {"id", "type": "delta", "text", "logprobs", "index"}    streamed text (logprobs: OpenAI content entries;
                                                            index: the choice, only when n > 1)
    {"id", "type": "finish", "index", "finish_reason"}      one choice ended (only when n > 1)
    {"id", "type": "done", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}, "stop_sequence"}
    {"id", "type": "vector", "index", "b64"}                one embedding (float32, little-endian, base64)
    {"id", "type": "result", ...}                           tokenize: tokens; detokenize: text;
                                                            embed: count, prompt_tokens (after the vectors)
    {"id", "type": "error", "error": {"class": "ContextLengthExceeded", "message", "param"}}

Threads: the main thread reads requests, answers vocabulary lookups, flips cancel flags and hands the rest
to the scheduler thread, which owns the llama.cpp context and advances every running sequence per
``llama_decode`` (continuous batching, :mod:`mr_notebook.engine.llama.scheduler`). End of input (the host
went away) ends the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from mr_notebook.engine.protocol import DIRECT_OPS, QUEUED_OPS, decode, encode, error_payload
from mr_notebook.errors import MrNotebookError

log = logging.getLogger("mr_notebook.engine.worker")


class Connection:
    """The worker's end of the socketpair; ``send`` is safe from any thread."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.rfile = self.sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else encode(message)
        with self._lock:
            self.sock.sendall(data)


class Worker:
    """Reader loop (main thread) plus the scheduler thread that owns the llama.cpp context."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.model: Any = None
        self.scheduler: Any = None

    def load(self, config: dict[str, Any]) -> bool:
        from mr_notebook.engine.llama.model import Model, install_log_capture
        from mr_notebook.engine.llama.scheduler import Scheduler

        install_log_capture()
        try:
            gpu_layers = config.get("gpu_layers")
            if gpu_layers is None:
                import llama_cpp

                gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
            self.model = Model(str(config["path"]), int(gpu_layers), str(config.get("name") or "the model"))
            self.scheduler = Scheduler(self.model, config, self.conn.send)
        except MrNotebookError as exc:
            self.conn.send({"type": "error", "error": error_payload(exc)})
            return False
        self.conn.send(
            {
                "type": "ready",
                "pid": os.getpid(),
                "n_ctx": self.scheduler.n_ctx,
                "gpu_layers": int(gpu_layers),
                "n_vocab": self.model.n_vocab,
                "threads": self.scheduler.threads,
                "parallel": self.scheduler.parallel,
            }
        )
        return True

    def schedule(self) -> None:
        try:
            self.scheduler.run()
        except ConnectionError:  # a broken or reset socket: the host is gone, nobody is left to answer
            os._exit(0)
        except BaseException:  # a bug, or an OSError of our own (disk, memory map): die loudly, the host fails
            # the requests with this exit code and the worker's last stderr lines, and starts a fresh one
            log.exception("the scheduler stopped")
            os._exit(70)

    def answer(self, request: dict[str, Any]) -> None:
        rid = request["id"]
        try:
            if request["op"] == "tokenize":
                text = request["text"]
                result: dict[str, Any] = {"tokens": self.model.tokenize(text, add_special=False, special=True)}
            else:
                result = {"text": self.model.detokenize(request["tokens"])}
            self.conn.send({"id": rid, "type": "result", **result})
        except Exception as exc:  # a bad token id, for instance
            self.conn.send({"id": rid, "type": "error", "error": error_payload(exc)})

    def serve(self) -> None:
        threading.Thread(target=self.schedule, name="scheduler", daemon=True).start()
        for line in self.conn.rfile:
            request = decode(line)
            op = request.get("op")
            if op in QUEUED_OPS:
                self.scheduler.submit(request)
            elif op in DIRECT_OPS:
                self.answer(request)
            elif op == "cancel":
                self.scheduler.cancel(request.get("id"))
            elif op == "shutdown":
                break
        self.scheduler.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mr_notebook.engine.worker")
    parser.add_argument("--fd", type=int, required=True, help="the socketpair end inherited from the host")
    args = parser.parse_args(argv)
    # Ctrl-C in a terminal reaches the whole process group; the host decides when workers end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("MR_NOTEBOOK_WORKER_LOG", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    conn = Connection(args.fd)
    first = conn.rfile.readline()
    if not first:
        return 0
    worker = Worker(conn)
    if not worker.load(decode(first)["config"]):
        return 1
    worker.serve()
    sys.stderr.flush()
    # Skip interpreter teardown: freeing llama.cpp objects from a still-running thread can crash, and the
    # operating system reclaims everything at once.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
