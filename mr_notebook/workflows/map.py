"""``mr_notebook.map``: one prompt over a list, a Series or a DataFrame, concurrently, cached, resumable."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mr_notebook.errors import InvalidRequest, MrNotebookError
from mr_notebook.workflows.cache import ReplyCache, default_cache_dir, request_key
from mr_notebook.workflows.items import Items, assemble, prepare, render
from mr_notebook.workflows.provenance import ProvenanceSource
from mr_notebook.workflows.schema import Parser, response_format

if TYPE_CHECKING:
    from mr_notebook.client import ChatStream, Engine

#: Requests in flight when the model does not say how many sequences it serves at once.
DEFAULT_CONCURRENCY = 4


@dataclass(frozen=True)
class MapError:
    """One item that has no result: its position, its label (index value) and what went wrong."""

    position: int
    label: Any
    error: str
    message: str


class MapResult(list[Any]):
    """``map``'s result for a list: the values (None where an item failed), plus ``errors``,
    ``provenance`` and ``stats`` (``sent`` requests, ``cached`` replies)."""

    errors: list[MapError]
    provenance: dict[str, Any]
    stats: dict[str, int]


class MapInterrupted(KeyboardInterrupt):
    """Stop (a kernel interrupt) during ``map``: ``result`` holds what was done; rerun to send only the rest."""

    def __init__(self, result: Any, done: int, total: int) -> None:
        super().__init__(f"map stopped: {done} of {total} items done (cached; rerun the cell to finish).")
        self.result = result

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[33mKeyboardInterrupt: {self.args[0]} The partial result is in the exception's .result.\x1b[0m"]


def _engine_and_model(engine: Engine | None, model: str | None) -> tuple[Engine, str, Any]:
    """(engine, model, usage or None): the engine of this process and its default model unless given."""
    state = None
    if engine is None:
        from mr_notebook import current

        engine, state = current.engine(), current.usage
    model = model or (state.default_model if state is not None else None)
    if not model:
        raise InvalidRequest(
            "No model chosen: pass model='ai/smollm2' (a stored model), or load one with `%model run MODEL` first."
        )
    return engine, model, state


def model_parallel(engine: Engine, model: str, info: Mapping[str, Any]) -> int:
    """The model's parallel setting (sequences a batching worker serves at once), else 4."""
    from mr_notebook.store.refs import normalize

    name = normalize(model)
    loaded = [row for row in engine.ps() if normalize(str(row.get("model") or "ai/unknown")) == name]
    for source in (info.get("settings") or {}, *loaded):
        for key in ("parallel", "n_parallel", "max_batch", "max_sequences"):
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return DEFAULT_CONCURRENCY


def _progress_bar(progress: Any, total: int, initial: int, desc: str) -> Any:
    if progress is False or progress is None:
        return None
    if progress is True:
        from tqdm.auto import tqdm

        progress = tqdm
    return progress(total=total, initial=initial, desc=desc, unit="item")


def map(
    prompt: str | Callable[[Any], str],
    items: Any,
    *,
    model: str | None = None,
    system: str | None = None,
    schema: Any = None,
    max_tokens: int = 256,
    temperature: float = 0,
    seed: int | None = None,
    concurrency: int | None = None,
    cache: bool | str = True,
    errors: str = "keep",
    progress: Any = True,
    engine: Engine | None = None,
) -> Any:
    """Send ``prompt`` filled from each item to a model; see the README's "Notebook workflows" section.

    ``items``: a list (→ list), a pandas Series or DataFrame (→ Series on the same index; a DataFrame of
    fields with an object ``schema`` and a DataFrame input). ``prompt``: a template (``{column}`` fields of
    dict items and rows, ``{}`` for a plain item) or a callable item → str. ``cache``: True (the store's
    cache folder), False, or a folder. ``errors``: "keep" (None + an entry in ``errors``) or "raise".
    ``progress``: True (tqdm.auto), False, or a tqdm-like class.
    """
    if errors not in ("keep", "raise"):
        raise InvalidRequest('errors must be "keep" or "raise".')
    data = prepare(items)
    engine, model, state = _engine_and_model(engine, model)
    return _run(
        engine,
        model,
        state,
        data,
        prompt,
        system=system,
        schema=schema,
        params={
            "temperature": temperature,
            "max_tokens": max_tokens,
            **({"seed": seed} if seed is not None else {}),
        },
        concurrency=concurrency,
        cache=cache,
        errors=errors,
        progress=progress,
    )


def _run(
    engine: Engine,
    model: str,
    state: Any,
    data: Items,
    prompt: str | Callable[[Any], str],
    *,
    system: str | None,
    schema: Any,
    params: dict[str, Any],
    concurrency: int | None,
    cache: bool | str,
    errors: str,
    progress: Any,
) -> Any:
    parse: Parser | None = None
    if schema is not None:
        params["response_format"], parse = response_format(schema)
    head = [{"role": "system", "content": system}] if system else []
    conversations = [[*head, {"role": "user", "content": render(prompt, item)}] for item in data.records]
    info = engine.inspect(model)
    source = ProvenanceSource(engine)
    provenance = source.record(model, params)
    if state is not None:
        state.used_models[model] = provenance["digest"]
    store = (ReplyCache(default_cache_dir() if cache is True else cache)) if cache else None
    keys = [request_key(provenance["digest"], messages, params) for messages in conversations]

    total = len(conversations)
    replies: list[dict[str, Any] | None] = [store.get(key) if store is not None else None for key in keys]
    failures: dict[int, BaseException] = {}
    todo = [i for i, reply in enumerate(replies) if reply is None]
    cached = total - len(todo)
    bar = _progress_bar(progress, total, cached, model)
    workers = concurrency or model_parallel(engine, model, info)
    stop = threading.Event()
    open_streams: set[ChatStream] = set()
    guard = threading.Lock()

    def ask(i: int) -> dict[str, Any]:
        if stop.is_set():
            raise _Skipped
        stream = engine.chat_stream(model, conversations[i], **params)
        with guard:
            open_streams.add(stream)
        try:
            with stream:
                text = stream.text()
            if stop.is_set() and stream.finish_reason == "cancelled":
                raise _Skipped
            return {"text": text, "usage": stream.usage, "finish_reason": stream.finish_reason}
        finally:
            with guard:
                open_streams.discard(stream)

    def stop_all() -> None:
        stop.set()
        with guard:
            streams = list(open_streams)
        for stream in streams:
            stream.close()

    sent = 0
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mr-notebook-map")
    try:
        futures: dict[Future[dict[str, Any]], int] = {pool.submit(ask, i): i for i in todo}
        pending = set(futures)
        while pending:
            # A bounded wait, so a kernel interrupt (delivered to this thread) lands between polls.
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                i = futures[future]
                exc = future.exception()
                if isinstance(exc, _Skipped):
                    continue
                sent += 1
                if exc is None:
                    replies[i] = future.result()
                    if store is not None:
                        store.put(keys[i], replies[i] or {})
                elif isinstance(exc, MrNotebookError):
                    failures[i] = exc
                else:
                    raise exc
                if errors == "raise" and (i in failures or _parse_failure(parse, replies[i]) is not None):
                    stop_all()
                    raise failures.get(i) or _parse_failure(parse, replies[i])  # type: ignore[misc]
                if bar is not None:
                    bar.update(1)
    except KeyboardInterrupt:
        stop_all()
        pool.shutdown(wait=False, cancel_futures=True)
        result = assemble(data, _values(replies, failures, parse, data), schema)
        done_count = sum(r is not None for r in replies)
        _annotate(result, data, failures, provenance, sent, cached)
        raise MapInterrupted(result, done_count, total) from None
    except BaseException:
        stop_all()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    pool.shutdown(wait=True)
    result = assemble(data, _values(replies, failures, parse, data), schema)
    _annotate(result, data, failures, provenance, sent, cached)
    return result


class _Skipped(Exception):
    """A request not sent (or cut off) because the map was stopped."""


def _parse_failure(parse: Parser | None, reply: dict[str, Any] | None) -> MrNotebookError | None:
    if parse is None or reply is None:
        return None
    try:
        parse(reply["text"])
    except MrNotebookError as exc:
        return exc
    return None


def _values(
    replies: Sequence[dict[str, Any] | None], failures: dict[int, BaseException], parse: Parser | None, data: Items
) -> list[Any]:
    values: list[Any] = []
    for i, reply in enumerate(replies):
        if reply is None:
            values.append(None)
            continue
        if parse is None:
            values.append(reply["text"])
            continue
        try:
            values.append(parse(reply["text"]))
        except MrNotebookError as exc:
            failures[i] = exc
            values.append(None)
    return values


def _annotate(
    result: Any,
    data: Items,
    failures: dict[int, BaseException],
    provenance: dict[str, Any],
    sent: int,
    cached: int,
) -> None:
    problems = [
        MapError(i, data.labels[i], type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        for i, exc in sorted(failures.items())
    ]
    stats = {"sent": sent, "cached": cached, "time": int(time.time())}
    if isinstance(result, MapResult):
        result.errors, result.provenance, result.stats = problems, provenance, stats
    else:  # pandas: attrs is where a Series / DataFrame keeps metadata
        result.attrs.update({"errors": problems, "provenance": provenance, "stats": stats})
