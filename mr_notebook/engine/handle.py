"""The host side of one worker process: start it, multiplex requests over its socket, notice its death."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mr_notebook
from mr_notebook.engine.memory import Estimate
from mr_notebook.engine.protocol import MAX_LINE, decode, encode, to_exception
from mr_notebook.errors import Cancelled, ModelLoadError, MrNotebookError, WorkerCrashed

log = logging.getLogger(__name__)

#: How long a worker may take to exit after ``shutdown`` before it is killed.
SHUTDOWN_GRACE = 5.0

#: The only environment variables a worker inherits. A worker parses untrusted GGUF files and chat
#: templates, so it must not hold the Jupyter token, API keys or registry credentials; what is left is what
#: Python, the dynamic loader, OpenMP and the GPU runtimes read.
ENV_ALLOWED = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "SYSTEMROOT",
        "SYSTEMDRIVE",
        "WINDIR",
        "COMSPEC",
        "PATHEXT",
        "NUMBER_OF_PROCESSORS",
        "LD_LIBRARY_PATH",
        "DYLD_LIBRARY_PATH",
        "DYLD_FALLBACK_LIBRARY_PATH",
        "LIBRARY_PATH",
        "VIRTUAL_ENV",
        "CONDA_PREFIX",
        "PYTHONHOME",
        "PYTHONPATH",
        "PYTHONUTF8",
        "PYTHONIOENCODING",
        "PYTHONFAULTHANDLER",
        "MR_NOTEBOOK_WORKER_LOG",
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "HIP_VISIBLE_DEVICES",
        "ROCR_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
        "ZE_AFFINITY_MASK",
        "ONEAPI_DEVICE_SELECTOR",
    }
)
#: Prefixes of variables that tune the runtimes (``LC_ALL``, ``OMP_NUM_THREADS``, ``GGML_VK_…``).
ENV_ALLOWED_PREFIXES = ("LC_", "OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GGML_", "LLAMA_ARG_NO", "VK_", "MTL_")


def worker_env(environ: dict[str, str] | os._Environ[str], extra: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: the allow-listed part of ``environ``, our PYTHONPATH, then ``extra``."""
    env = {k: v for k, v in environ.items() if k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES)}
    # The worker must import this very package, even when it runs from a source tree.
    root = str(Path(mr_notebook.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@dataclass
class Pending:
    """One request sent to the worker; its messages arrive on ``queue``."""

    rid: int
    queue: asyncio.Queue[dict[str, Any] | MrNotebookError] = field(default_factory=asyncio.Queue)
    finished: bool = False
    #: The prompt's length in tokens, from the worker's ``started`` message (generation requests).
    prompt_tokens: int | None = None


def exit_reason(returncode: int | None) -> str:
    """``"was killed by SIGKILL"`` or ``"exited with code 1"``."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


class WorkerHandle:
    """One loaded model's worker process, as the Runner sees it."""

    def __init__(
        self,
        name: str,
        model_id: str,
        config: dict[str, Any],
        estimate: Estimate,
        keep_alive: float,
        on_exit: Callable[[WorkerHandle], None],
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.id = model_id
        self.config = config
        self.estimate = estimate
        self.keep_alive = keep_alive
        self.pid = 0
        self.n_ctx = int(config.get("n_ctx", 0))
        self.loaded_at = self.last_used = time.time()
        #: Requests the Runner accepted for this model and has not finished (queued or running).
        self.active = 0
        self.running: set[int] = set()
        self.expires_at: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False
        #: The model's settings changed while it was busy: end and load it again once it goes idle.
        self.reload_when_idle = False
        self._on_exit = on_exit
        self._extra_env = dict(extra_env or {})
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._stderr: deque[str] = deque(maxlen=30)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: The longest message line accepted from the worker; a longer one is a protocol error.
        self.max_line = MAX_LINE
        self.n_vocab = 0
        self.threads = 0
        self.parallel = 1
        #: The worker's latest scheduler statistics (``stats`` messages).
        self.stats: dict[str, Any] = {}
        self._broken = False

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and not self.closing and not self._broken

    @property
    def queued(self) -> int:
        return max(self.active - len(self.running), 0)

    async def start(self, timeout: float) -> None:
        """Spawn the worker and wait until the model is loaded (``ModelLoadError`` if it is not).

        On any failure, cancellation included, the worker process is killed before this returns.
        """
        try:
            await self._start(timeout)
        except BaseException:
            self._kill()
            raise

    def _kill(self) -> None:
        """End the process now (no await: this also runs while a cancellation unwinds)."""
        self.closing = True
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
        if self._writer is not None:
            self._writer.close()

    async def _start(self, timeout: float) -> None:
        ours, theirs = socket.socketpair()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "mr_notebook.engine.worker",
                "--fd",
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env=worker_env(os.environ, self._extra_env),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid = self._proc.pid
        self._reader, self._writer = await asyncio.open_connection(sock=ours, limit=self.max_line)
        self._tasks.append(asyncio.create_task(self._drain_stderr()))
        self._writer.write(encode({"op": "load", "config": self.config}))
        try:
            ready = await asyncio.wait_for(self._reader.readline(), timeout)
        except (ConnectionError, ValueError):
            # It died before reading what we sent (its socket was reset), or sent a line past the limit: either
            # way no model is loaded, and what it printed says why (closing below collects it).
            ready = b""
        except asyncio.TimeoutError:
            await self.close()
            raise ModelLoadError(
                f"Model {self.name} did not load within {timeout:g} s ({self.config['path']}); the machine may "
                "be short of memory or the file very large. Try again, or raise the load timeout."
            ) from None
        message = decode(ready) if ready else None
        if message is None or message.get("type") != "ready":
            await self.close()
            if message is not None and message.get("type") == "error":
                raise to_exception(message["error"])
            tail = " | ".join(list(self._stderr)[-5:])
            raise ModelLoadError(
                f"The worker for model {self.name} {exit_reason(self._proc.returncode)} while loading "
                f"{self.config['path']}"
                + (f": {tail}" if tail else "")
                + ". The file may be damaged; remove the model and pull (or package) it again."
            )
        self.n_ctx = int(message.get("n_ctx", self.n_ctx))
        self.n_vocab = int(message.get("n_vocab", 0))
        self.threads = int(message.get("threads", 0))
        self.parallel = int(message.get("parallel", 1))
        self.loaded_at = self.last_used = time.time()
        self._tasks.append(asyncio.create_task(self._dispatch()))

    async def _drain_stderr(self) -> None:
        """Keep the pipe flowing (a full pipe would stall the worker) and the last lines for errors."""
        if self._proc is None or self._proc.stderr is None:
            return
        async for raw in self._proc.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug("worker %s (%s): %s", self.pid, self.name, line)

    async def _dispatch(self) -> None:
        """Route worker messages to their requests; at end of input, fail what is left."""
        if self._reader is None or self._proc is None:
            return
        broken: str | None = None
        try:
            while line := await self._reader.readline():
                message = decode(line)
                if message.get("type") == "stats":
                    self.stats = message
                    continue
                pending = self._pending.get(message.get("id", -1))
                if pending is None:
                    continue  # a request that was cancelled on this side
                kind = message.get("type")
                if kind == "started":
                    self.running.add(pending.rid)
                    if "prompt_tokens" in message:
                        pending.prompt_tokens = int(message["prompt_tokens"])
                    continue
                pending.queue.put_nowait(message)
        except (OSError, ValueError) as exc:  # a line over max_line, broken JSON, a reset socket
            broken = str(exc) or type(exc).__name__
            log.warning("protocol error from worker %s (%s): %s; killing it", self.pid, self.name, broken)
            self._broken = True
            if not self.closing:
                # The stream cannot be resynchronised: a worker left running would hold its requests forever.
                self._proc.kill()
        returncode = await self._proc.wait()
        if not self.closing:
            tail = " | ".join(list(self._stderr)[-3:])
            if broken is not None:
                error = WorkerCrashed(
                    f"The worker for model {self.name} (pid {self.pid}) sent a message the server could not "
                    f"read ({broken[:200]}), so it was stopped. Send the request again (a fresh worker starts); "
                    "if it repeats, ask for less at once (fewer inputs or tokens per request)."
                )
            else:
                error = WorkerCrashed(
                    f"The worker process for model {self.name} (pid {self.pid}) {exit_reason(returncode)} while "
                    "serving this request. The next request starts a fresh worker; if this repeats, check free "
                    "memory (the system may have killed it)" + (f". Last worker output: {tail}" if tail else ".")
                )
            self._fail_all(error)
        self._on_exit(self)

    def _fail_all(self, error: MrNotebookError) -> None:
        for pending in list(self._pending.values()):
            pending.queue.put_nowait(error)
        self.running.clear()

    def submit(self, op: str, payload: dict[str, Any]) -> Pending:
        if self._writer is None or not self.alive:
            raise WorkerCrashed(f"The worker for model {self.name} has ended; send the request again.")
        pending = Pending(next(self._ids))
        self._pending[pending.rid] = pending
        self._writer.write(encode({"op": op, "id": pending.rid, **payload}))
        return pending

    async def receive(self, pending: Pending) -> dict[str, Any]:
        """The next message for a request; a worker error or crash is raised."""
        message = await pending.queue.get()
        if isinstance(message, MrNotebookError):
            pending.finished = True
            raise message
        kind = message.get("type")
        if kind == "error":
            pending.finished = True
            raise to_exception(message["error"])
        if kind in ("done", "result"):
            pending.finished = True
        return message

    def finish(self, pending: Pending) -> None:
        """Forget a request; one that has not finished is cancelled in the worker."""
        self._pending.pop(pending.rid, None)
        self.running.discard(pending.rid)
        if not pending.finished and self.alive and self._writer is not None:
            self._writer.write(encode({"op": "cancel", "id": pending.rid}))

    async def call(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One request, one answer."""
        pending = self.submit(op, payload)
        try:
            while True:
                message = await self.receive(pending)
                if pending.finished:
                    return message
        finally:
            self.finish(pending)

    async def close(self) -> None:
        """End the worker (``shutdown``, then SIGKILL after a grace period); requests left get ``Cancelled``."""
        if self.timer is not None:
            self.timer.cancel()
        self.closing = True
        self._fail_all(
            Cancelled(
                f"Model {self.name} was unloaded while this request was waiting or running; send it again to "
                "load the model anew."
            )
        )
        proc = self._proc
        if proc is not None and proc.returncode is None:
            if self._writer is not None and not self._writer.is_closing():
                self._writer.write(encode({"op": "shutdown"}))
            try:
                await asyncio.wait_for(proc.wait(), SHUTDOWN_GRACE)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._writer is not None:
            self._writer.close()
        for task in self._tasks:
            if task is not asyncio.current_task():
                try:
                    await asyncio.wait_for(task, SHUTDOWN_GRACE)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
