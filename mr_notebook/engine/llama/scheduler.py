"""Continuous batching: one thread owns the context and advances every running sequence per ``llama_decode``.

Each step decodes the last sampled token of every generating sequence, then (in its own decode) the next
chunk of ``n_batch`` tokens of the first prompt being loaded; so a long prompt loads in chunks between the
other streams' tokens instead of stopping them. Requests are admitted between steps in arrival order into
the free slot whose cached tokens share the longest prefix with the prompt (only the rest is evaluated);
``n`` > 1 evaluates the prompt once and copies it into the other choices' slots (``llama_memory_seq_cp``).
A cancelled request frees its slot before the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import llama_cpp

from mr_notebook.engine.llama.batch import Batch, new_context
from mr_notebook.engine.llama.cores import CoreShare
from mr_notebook.engine.llama.embedder import Embedder
from mr_notebook.engine.llama.jobs import Choice, EmbedJob, Job, Slot, new_job
from mr_notebook.engine.llama.model import Model
from mr_notebook.engine.llama.outbox import Outbox
from mr_notebook.engine.llama.prompt import ChatPrompt
from mr_notebook.engine.llama.sampling import Sampler, logits_row, logprob_entry
from mr_notebook.engine.protocol import error_payload
from mr_notebook.engine.stops import StopMatcher
from mr_notebook.errors import ContextLengthExceeded, MrNotebookError, WorkerCrashed

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any] | bytes], None]

#: Tokens per embedding batch while streams are running (a batch alone takes up to the embedding context).
EMBED_BESIDE_STREAMS = 64
#: How often (seconds) a busy worker reports its scheduler statistics to the host.
STATS_EVERY = 0.5


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Scheduler:
    """The decode loop. ``submit`` and ``cancel`` are called from the reader thread; the rest runs here."""

    def __init__(self, model: Model, config: dict[str, Any], send: Send) -> None:
        self.model = model
        self.outbox = Outbox(send)
        self.send = self.outbox.send
        self.threads = max(int(config.get("threads") or 1), 1)
        self.parallel = max(int(config.get("parallel") or 1), 1)
        n_ctx = int(config["n_ctx"])
        self.n_batch = max(min(int(config.get("n_batch") or 512), n_ctx), 32)
        self.ctx = new_context(model, n_ctx=n_ctx, n_batch=self.n_batch, n_seq=self.parallel, threads=self.threads)
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self.ctx))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.prompt = ChatPrompt(model, config.get("chat_template") or model.chat_template())
        self.embedder = Embedder(model, config, self.threads)
        self.cores = CoreShare(self.threads)
        self.slots = [Slot(seq) for seq in range(self.parallel)]
        self.batch = Batch(self.n_batch)
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.cancels: dict[Any, threading.Event] = {}
        self.waiting: deque[Job] = deque()
        self.running: list[Job] = []
        self.embeds: deque[EmbedJob] = deque()
        self._stats_at = 0.0
        self._embed_skip = False
        self._decodes = 0
        self._decoded_tokens = 0
        self._shape = (0, 0, 0)
        self._embedded_reported = 0

    # ------------------------------------------------------------------ reader thread

    def submit(self, request: dict[str, Any]) -> None:
        self.cancels[request["id"]] = threading.Event()
        self.inbox.put(request)

    def cancel(self, rid: Any) -> None:
        flag = self.cancels.get(rid)
        if flag is not None:
            flag.set()
            self.inbox.put({"op": "wake"})

    def stop(self) -> None:
        self.inbox.put(None)

    # ------------------------------------------------------------------ scheduler thread

    def run(self) -> None:
        while True:
            busy = bool(self.running or self.embeds)
            try:  # the outbox is empty here: every iteration ends with a flush
                item = self.inbox.get(block=not busy and not self.waiting)
                while True:
                    if item is None:
                        self.outbox.flush()
                        return
                    self._take(item)
                    item = self.inbox.get_nowait()
            except queue.Empty:
                pass
            self._drop_cancelled()
            self._admit()
            self.outbox.flush()  # "started" and errors go out before a long step
            if self.embeds and (not self.running or self._embed_turn()):
                self._embed_step()
            if self.running or self.embeds:
                self._share_cores()
            if self.running:
                self._step()
            self._report()
            self.outbox.flush()

    def _take(self, request: dict[str, Any]) -> None:
        op, rid = request.get("op"), request.get("id")
        if op == "wake":
            return
        cancel = self.cancels.get(rid) or threading.Event()
        try:
            if op == "embed":
                inputs = self.embedder.prepare(request["inputs"])
                self.embeds.append(EmbedJob(rid, inputs, cancel))
                self.send({"id": rid, "type": "started"})
            else:
                self.waiting.append(self._prepare(request, cancel))
        except Exception as exc:  # every failure goes to its request; the worker keeps serving
            self._fail(rid, exc)

    def _fail(self, rid: Any, exc: BaseException) -> None:
        if not isinstance(exc, MrNotebookError):
            log.exception("request %s failed", rid)
        self.cancels.pop(rid, None)
        self.send({"id": rid, "type": "error", "error": error_payload(exc)})

    def _prepare(self, request: dict[str, Any], cancel: threading.Event) -> Job:
        return new_job(request, cancel, self.model, self.prompt, n_ctx=self.n_ctx, parallel=self.parallel)

    def _drop_cancelled(self) -> None:
        for job in [j for j in self.waiting if j.cancel.is_set()]:
            self.waiting.remove(job)
            self.cancels.pop(job.rid, None)
        for job in [j for j in self.running if j.cancel.is_set()]:
            for choice in job.choices:
                if choice.finish is None:
                    choice.finish = "cancelled"
            self._finish_job(job)
        for embed in [e for e in self.embeds if e.cancel.is_set()]:
            self.embeds.remove(embed)
            self.cancels.pop(embed.rid, None)

    def _admit(self) -> None:
        """Arrival order: the head waits for enough free slots rather than letting later requests pass."""
        while self.waiting:
            job = self.waiting[0]
            free = [s for s in self.slots if s.choice is None]
            if len(free) < job.n:
                return
            self.waiting.popleft()
            try:
                self._start(job, free)
            except Exception as exc:
                for choice in job.choices:
                    choice.sampler.free()
                    choice.slot.choice = None
                self._fail(job.rid, exc)

    @staticmethod
    def _affinity(slot: Slot, prompt: list[int]) -> tuple[int, float]:
        """Prefer the slot whose cache this prompt continues; else the emptiest, least recently used one.

        A cache counts only when the prompt reuses at least half of it (llama-server's similarity rule): a new
        conversation that merely shares the template's first tokens must not evict another one's cache.
        """
        shared = common_prefix(slot.cache, prompt)
        if shared * 2 < len(slot.cache) or shared == 0:
            shared = 0
        return shared, -len(slot.cache) * 1e9 - slot.last_used

    def _start(self, job: Job, free: list[Slot]) -> None:
        primary = max(free, key=lambda s: self._affinity(s, job.prompt))
        reuse = min(common_prefix(primary.cache, job.prompt), len(job.prompt) - 1)  # the last token gives logits
        if reuse < len(primary.cache) and not llama_cpp.llama_memory_seq_rm(self.memory, primary.seq, reuse, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, primary.seq, -1, -1)
            reuse = 0
        del primary.cache[reuse:]
        job.n_past = job.cached = reuse
        others = sorted((s for s in free if s is not primary), key=lambda s: s.last_used)[: job.n - 1]
        for i, slot in enumerate([primary, *others]):
            sampler = Sampler(self.model, job.params, job.grammar, seed_offset=i)
            choice = Choice(index=i, slot=slot, sampler=sampler, matcher=StopMatcher(job.stops))
            slot.choice = choice
            job.choices.append(choice)
        self.running.append(job)
        self.send({"id": job.rid, "type": "started", "prompt_tokens": len(job.prompt)})

    # ------------------------------------------------------------------ one decode step

    def _step(self) -> None:
        """One token of every generating sequence in one decode, then (a separate decode) the next chunk of the
        first prompt being loaded.

        A prompt is always evaluated in the same chunks, ``n_batch`` tokens from where its evaluation starts, and
        never in one decode with other sequences' tokens: llama.cpp splits a mixed batch into other shapes, whose
        sums round differently, and greedy answers then depended on what else was running (2 of 32 at 8 clients).
        """
        batch = self.batch
        batch.clear()
        rows: list[tuple[Job, Choice, int]] = []
        for job in self.running:
            for choice in job.choices:
                if choice.pending is not None and choice.finish is None:
                    slot = choice.slot
                    rows.append((job, choice, batch.add(choice.pending, len(slot.cache), slot.seq, True)))
        if rows:
            if not self._decode():
                return
            for _job, choice, _row in rows:
                choice.slot.cache.append(choice.pending)  # type: ignore[arg-type]
            for job, choice, row in rows:
                self._sample(job, choice, row)
        loading = next((j for j in self.running if j.prefilling), None)
        if loading is not None:
            self._prefill(loading)
        for job in [j for j in self.running if j.done]:
            self._finish_job(job)

    def _decode(self) -> bool:
        result = self.batch.decode(self.ctx)
        if result != 0:
            self._decode_failed(result)
            return False
        self._decodes += 1
        self._decoded_tokens += self.batch.n
        return True

    def _prefill(self, job: Job) -> None:
        batch = self.batch
        batch.clear()
        chunk = job.prompt[job.n_past : job.n_past + self.n_batch]
        last = job.n_past + len(chunk) == len(job.prompt)
        primary = job.choices[0].slot
        row = batch.add_many(chunk, job.n_past, primary.seq, logits_last=last)
        if not self._decode():
            return
        primary.cache.extend(chunk)
        job.n_past += len(chunk)
        if last:
            for choice in job.choices[1:]:  # n > 1: the prompt is evaluated once and copied
                llama_cpp.llama_memory_seq_rm(self.memory, choice.slot.seq, -1, -1)
                llama_cpp.llama_memory_seq_cp(self.memory, primary.seq, choice.slot.seq, -1, -1)
                choice.slot.cache = list(primary.cache)
            for choice in job.choices:
                self._sample(job, choice, row)

    def _decode_failed(self, result: int) -> None:
        """No room left in the shared KV cache (1), or a llama.cpp failure: shed load, never hang."""
        idle = [s for s in self.slots if s.choice is None and s.cache]
        if result == 1 and idle:  # first drop what is only kept for prefix reuse, least recently used first
            slot = min(idle, key=lambda s: s.last_used)
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, -1, -1)
            slot.cache.clear()
            return
        victim = max(self.running, key=lambda j: j.admitted_at)  # the newest request gives way
        if result == 1 and len(self.running) > 1:
            message = (
                f"The model's context ({self.n_ctx} tokens) is shared by {len(self.running)} running requests and "
                "is full. Send the request again, or raise the context size (`mr-notebook configure MODEL "
                "--context-size N`)."
            )
        else:
            message = f"llama.cpp could not evaluate this request (llama_decode returned {result})."
        if victim.prefilling or result != 1:
            for choice in victim.choices:
                self._release(choice)
            self.running.remove(victim)
            self._fail(victim.rid, ContextLengthExceeded(message) if result == 1 else WorkerCrashed(message))
            return
        for choice in victim.choices:
            if choice.finish is None:
                choice.finish = "length"
        self._finish_job(victim)

    def _sample(self, job: Job, choice: Choice, row: int) -> None:
        entry = None
        if job.top_logprobs is not None:
            logits = logits_row(self.ctx, row, self.model.n_vocab).copy()
        token = choice.sampler.sample(self.ctx, row)
        if self.model.is_eog(token):
            choice.finish = "stop"
            return
        choice.generated += 1
        job.completion_tokens += 1
        if job.top_logprobs is not None:
            entry = logprob_entry(self.model, logits, token, job.top_logprobs)
        text = choice.decoder.decode(self.model.piece(token, special=token in choice.sampler.preserved))
        shown, hit = choice.matcher.feed(text)
        self.outbox.emit(job, choice, shown, entry)
        if hit:
            choice.finish, choice.hit = "stop", True
        elif (job.max_tokens is not None and choice.generated >= job.max_tokens) or len(
            choice.slot.cache
        ) + 1 >= self.n_ctx:
            choice.finish = "length"
        else:
            choice.pending = token

    def _release(self, choice: Choice) -> None:
        choice.sampler.free()
        choice.slot.choice = None
        choice.slot.last_used = time.monotonic()

    def _finish_job(self, job: Job) -> None:
        cancelled = job.cancel.is_set()
        for choice in job.choices:
            if not cancelled:
                if not choice.hit:  # after a stop string nothing more is shown
                    shown, hit = choice.matcher.feed(choice.decoder.decode(b"", final=True))
                    choice.held += shown + ("" if hit else choice.matcher.flush())
                if choice.held:
                    self.outbox.text(job, choice)
                if job.n > 1:
                    self.send({"id": job.rid, "type": "finish", "index": choice.index, "finish_reason": choice.finish})
            self._release(choice)
        if job in self.running:
            self.running.remove(job)
        self.cancels.pop(job.rid, None)
        usage = {
            "prompt_tokens": len(job.prompt),
            "completion_tokens": job.completion_tokens,
            "cached_tokens": job.cached,
        }
        finish = "cancelled" if cancelled else job.choices[0].finish
        done: dict[str, Any] = {"id": job.rid, "type": "done", "finish_reason": finish or "stop", "usage": usage}
        if job.choices and job.choices[0].matcher.matched is not None:
            done["stop_sequence"] = job.choices[0].matcher.matched
        self.send(done)

    # ------------------------------------------------------------------ embeddings and statistics

    def _share_cores(self) -> None:
        threads = self.cores.check()
        if threads is not None:
            log.info("decoding with %d of %d threads (other processes are using the rest)", threads, self.threads)
            llama_cpp.llama_set_n_threads(self.ctx, threads, threads)
            self.embedder.set_threads(threads)

    def _embed_turn(self) -> bool:
        """Beside running streams, embeddings get every other iteration, in small batches: a full embedding
        batch takes seconds here, and streams must keep flowing (time between their tokens stays bounded)."""
        self._embed_skip = not self._embed_skip
        return self._embed_skip

    def _embed_step(self) -> None:
        job = self.embeds[0]
        try:
            finished = self.embedder.step(job, self.send, EMBED_BESIDE_STREAMS if self.running else None)
        except Exception as exc:
            self.embeds.popleft()
            self._fail(job.rid, exc)
            return
        if finished:
            self.embeds.popleft()
            self.cancels.pop(job.rid, None)

    def _report(self) -> None:
        now = time.monotonic()
        shape = (sum(len(j.choices) for j in self.running), len(self.waiting), len(self.embeds))
        worked = self._decodes > 0 or self.embedder.embedded != self._embedded_reported
        if shape == self._shape and (now - self._stats_at < STATS_EVERY or not worked):
            return
        self._embedded_reported = self.embedder.embedded
        fill = self._decoded_tokens / (self._decodes * self.n_batch) if self._decodes else 0.0
        self.send(
            {
                "type": "stats",
                "active": shape[0],
                "queued": shape[1],
                "batch_fill": round(fill, 4),
                "decodes": self._decodes,
                "embedding": shape[2],
                "embedded": self.embedder.embedded,
            }
        )
        self._stats_at, self._decodes, self._decoded_tokens, self._shape = now, 0, 0, shape
