"""A model's worker process: ``python -m mr_notebook.engine.worker --fd N``.

The only place llama_cpp is imported. The host (:class:`~mr_notebook.engine.handle.WorkerHandle`) talks to
it over a socketpair whose worker end is fd ``N`` (not stdout: llama.cpp may write there). Messages are JSON
objects, one per line, multiplexed by request ``id`` so that a scheduler advancing several sequences per
``llama_decode`` (continuous batching) can arrive later without a protocol change.

Host → worker::

    {"op": "load", "config": {"path", "name", "n_ctx", "gpu_layers", "threads", "chat_template",
                              "pooling", "context_length"}}                      first message, once
    {"op": "chat", "id": ID, "messages": [...], "params": {...}}               queued
    {"op": "complete", "id": ID, "prompt": "...", "params": {...}}             queued
    {"op": "embed", "id": ID, "inputs": ["...", ...]}                           queued
    {"op": "tokenize", "id": ID, "text": "..."}                                 answered at once
    {"op": "detokenize", "id": ID, "tokens": [...]}                             answered at once
    {"op": "cancel", "id": ID}                 stop that request (queued: skipped; running: within a token)
    {"op": "shutdown"}                         exit now

Worker → host::

    {"type": "ready", "pid", "n_ctx", "gpu_layers"}         after load; or an "error" without id, then exit 1
    {"id", "type": "started"}                               the scheduler began this request
    {"id", "type": "delta", "text", "logprobs"}             streamed text (logprobs: OpenAI content entries)
    {"id", "type": "done", "finish_reason", "usage": {"prompt_tokens", "completion_tokens"}}
    {"id", "type": "result", ...}                           tokenize: tokens; detokenize: text;
                                                            embed: vectors, prompt_tokens
    {"id", "type": "error", "error": {"class": "ContextLengthExceeded", "message", "param"}}

Threads: the main thread reads requests, answers vocabulary lookups, flips cancel flags and queues the
rest; one scheduler thread owns the Llama objects and serves the queue one request at a time in arrival
order, so a new request never interrupts a running stream. End of input (the host went away) ends the process.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
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
    """Reader loop (main thread) plus one scheduler thread serving the queue in arrival order."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.cancels: dict[Any, threading.Event] = {}
        self.backend: Any = None

    def load(self, config: dict[str, Any]) -> bool:
        from mr_notebook.engine.backend import LlamaBackend

        try:
            self.backend = LlamaBackend(config)
        except MrNotebookError as exc:
            self.conn.send({"type": "error", "error": error_payload(exc)})
            return False
        self.conn.send(
            {"type": "ready", "pid": os.getpid(), "n_ctx": self.backend.n_ctx, "gpu_layers": self.backend.gpu_layers}
        )
        return True

    def schedule(self) -> None:
        while (request := self.queue.get()) is not None:
            rid = request["id"]
            cancel = self.cancels.get(rid) or threading.Event()
            try:
                if cancel.is_set():
                    continue
                self.conn.send({"id": rid, "type": "started"})
                if request["op"] == "embed":
                    self.backend.embed(request, self.conn.send)
                else:
                    self.backend.generate(request["op"], request, cancel, self.conn.send)
            except OSError:
                os._exit(0)  # the host is gone
            except Exception as exc:  # report every failure to its request; the worker keeps serving
                if not isinstance(exc, MrNotebookError):
                    log.exception("request %s failed", rid)
                self.conn.send({"id": rid, "type": "error", "error": error_payload(exc)})
            finally:
                self.cancels.pop(rid, None)

    def answer(self, request: dict[str, Any]) -> None:
        rid = request["id"]
        try:
            if request["op"] == "tokenize":
                result: dict[str, Any] = {"tokens": self.backend.tokenize(request["text"])}
            else:
                result = {"text": self.backend.detokenize(request["tokens"])}
            self.conn.send({"id": rid, "type": "result", **result})
        except Exception as exc:  # a bad token id, for instance
            self.conn.send({"id": rid, "type": "error", "error": error_payload(exc)})

    def serve(self) -> None:
        threading.Thread(target=self.schedule, name="scheduler", daemon=True).start()
        for line in self.conn.rfile:
            request = decode(line)
            op = request.get("op")
            if op in QUEUED_OPS:
                self.cancels[request["id"]] = threading.Event()
                self.queue.put(request)
            elif op in DIRECT_OPS:
                self.answer(request)
            elif op == "cancel":
                flag = self.cancels.get(request.get("id"))
                if flag is not None:
                    flag.set()
            elif op == "shutdown":
                break


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
