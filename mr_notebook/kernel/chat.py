"""``%%chat``: the cell is the user message, the reply streams into the output and lands in ``_chat``.

Flags beyond the basics: ``--error`` (explain the last exception), ``--insert`` (reply's first code block into
a new cell), ``--models a,b`` / ``-n 3`` (replies side by side), ``--logprobs`` (tokens shaded by probability).
Every reply carries provenance (``_chat.provenance``), also written into the output's metadata.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError

from mr_notebook.braces import resolve, substitute
from mr_notebook.errors import MrNotebookError, ReplyNotJSON
from mr_notebook.kernel.context import error_prompt, first_code_block, preview
from mr_notebook.kernel.display import StreamView, rich_frontend, short_error, show
from mr_notebook.kernel.parsing import HelpShown, chat_parser, split
from mr_notebook.kernel.reply import Reply
from mr_notebook.kernel.state import KernelState
from mr_notebook.workflows.provenance import ProvenanceSource
from mr_notebook.workflows.schema import Parser, json_object, response_format

__all__ = ["ChatReply", "GenerationStopped", "ReplyNotJSON", "chat_cell", "stream_reply"]

_DIM, _RESET = "\x1b[2m", "\x1b[0m"

#: Output metadata key under which %%chat saves provenance in the .ipynb.
METADATA_KEY = "mr_notebook"


class GenerationStopped(KeyboardInterrupt):
    """The user interrupted the kernel while a reply streamed; the engine stopped generating."""

    def _render_traceback_(self) -> list[str]:
        return ["\x1b[33mKeyboardInterrupt: generation stopped.\x1b[0m"]


class ChatReply(str):
    """The reply text, carrying what came with it."""

    usage: dict[str, int] | None
    messages: list[dict[str, Any]]
    model: str
    finish_reason: str | None
    #: The parsed reply with ``--json``/``--schema``, else None.
    data: Any
    #: Model name and digest, engine and version, parameters, seed, time.
    provenance: dict[str, Any]
    #: OpenAI ``logprobs.content`` entries with ``--logprobs``, else None.
    logprobs: list[dict[str, Any]] | None
    #: The model's reasoning (``reasoning_content``), shown collapsed above the answer; "" if none.
    reasoning: str

    def __new__(
        cls,
        text: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        finish_reason: str | None = None,
        data: Any = None,
        provenance: dict[str, Any] | None = None,
        logprobs: list[dict[str, Any]] | None = None,
        reasoning: str = "",
    ) -> ChatReply:
        reply = super().__new__(cls, text)
        reply.model, reply.messages, reply.usage = model, messages, usage
        reply.finish_reason, reply.data = finish_reason, data
        reply.provenance, reply.logprobs, reply.reasoning = provenance or {}, logprobs, reasoning
        return reply


class Streamed:
    """What :func:`stream_reply` got: text, reasoning, usage, finish reason, logprobs."""

    def __init__(self, text: str, stream: Any) -> None:
        self.text = text
        self.reasoning: str = stream.reasoning
        self.usage: dict[str, int] | None = stream.usage
        self.finish_reason: str | None = stream.finish_reason
        self.logprobs: list[dict[str, Any]] | None = stream.logprobs


def stream_reply(
    shell: Any,
    state: KernelState,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> Streamed:
    """Stream one answer into the cell output (``metadata`` goes on the final output), the model's reasoning
    collapsed above it. Interrupt stops the engine."""
    rich = rich_frontend(shell)
    stream = state.engine.chat_stream(model, messages, **params)
    view = StreamView(rich, render=lambda text: Reply(text, stream.reasoning, streaming=True))
    thoughts = _Thoughts(rich)
    parts: list[str] = []
    try:
        with stream:  # leaving the block (an interrupt included) closes it: the engine stops generating
            for delta in stream:
                thoughts.update(stream.reasoning, delta)
                parts.append(delta)
                view.update("".join(parts))
    except KeyboardInterrupt:
        thoughts.end()
        view.render = lambda text: Reply(text, stream.reasoning)
        view.finish("".join(parts) + ("\n\n" if parts else "") + "*[stopped]*")
        raise GenerationStopped from None
    thoughts.end()
    result = Streamed("".join(parts), stream)
    view.render = lambda text: Reply(text, result.reasoning)
    view.finish(result.text, metadata)
    return result


class _Thoughts:
    """In a terminal, the reasoning is written dimmed as it comes, before the answer (no collapsing there)."""

    def __init__(self, rich: bool) -> None:
        self.rich, self.written, self.closed = rich, 0, False

    def update(self, reasoning: str, delta: str) -> None:
        if self.rich or self.closed:
            return
        if len(reasoning) > self.written:
            sys.stdout.write((_DIM if not self.written else "") + reasoning[self.written :])
            self.written = len(reasoning)
        if delta and self.written:
            self.end()
            sys.stdout.write("\n")  # a blank line, then the answer
        sys.stdout.flush()

    def end(self) -> None:
        if self.written and not self.closed:
            sys.stdout.write(_RESET + "\n")
            self.closed = True


def _response_format(args: Any, namespace: dict[str, Any]) -> tuple[dict[str, Any] | None, Parser | None]:
    """(the response_format to send, what parses the reply) for ``--json`` / ``--schema``."""
    if args.json:
        return json_object()
    if args.schema is None:
        return None, None
    value = resolve(args.schema, namespace)
    if not (isinstance(value, type | dict)):
        try:
            value = json.loads(args.schema)
        except ValueError:
            raise UsageError(
                f"--schema {args.schema!r} is neither a variable holding a JSON schema (dict, pydantic model "
                "or TypedDict) nor JSON text."
            ) from None
        if not isinstance(value, dict):
            raise UsageError("--schema must be a JSON object (a JSON schema).")
    try:
        return response_format(value)
    except TypeError as exc:
        raise UsageError(f"--schema: {exc}") from None


def _params(args: Any, response_format: dict[str, Any] | None) -> dict[str, Any]:
    params = {
        key: value
        for key, value in (
            ("temperature", args.temperature),
            ("max_tokens", args.max_tokens),
            ("seed", args.seed),
            ("response_format", response_format),
        )
        if value is not None
    }
    if args.logprobs:
        from mr_notebook.kernel.tokens import TOP_LOGPROBS

        params.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return params


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")


def chat_cell(shell: Any, state: KernelState, line: str, cell: str) -> None:
    """Run one ``%%chat`` cell."""
    namespace: dict[str, Any] = shell.user_ns
    try:
        args = chat_parser().parse_magic(split(line, namespace))
    except HelpShown:
        return
    try:
        models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
        model = args.model or (models[0] if models else None) or state.default_model
        if not model:
            raise UsageError(
                "No model chosen: load one with `%model run MODEL` (then %%chat uses it), or "
                "name it with `%%chat -m MODEL`. `%model list` shows the stored models."
            )
        if args.n < 1:
            raise UsageError("-n must be 1 or more.")
        response_format, parse = _response_format(args, namespace)
        used: list[str] = []
        user = substitute(cell.strip("\n"), namespace, preview, used)
        if args.error:
            user = error_prompt(user)
        params = _params(args, response_format)
        if len(models) > 1 or args.n > 1:
            _compare(shell, state, args, models or [model], user, params)
            return
        conversation = state.conversation(model)
        if args.new:
            conversation.reset()
        if args.system is not None and not args.no_history:
            conversation.system = args.system
        messages = conversation.messages(user, history=not args.no_history, system=args.system)
        provenance = ProvenanceSource(state.engine).record(model, params)
        metadata = {METADATA_KEY: {"provenance": provenance}}
        streamed = stream_reply(shell, state, model, messages, params, metadata)
        state.used_models[model] = provenance["digest"]
        reply = ChatReply(
            streamed.text,
            model=model,
            messages=[*messages, {"role": "assistant", "content": streamed.text}],
            usage=streamed.usage,
            finish_reason=streamed.finish_reason,
            provenance=provenance,
            logprobs=streamed.logprobs,
            reasoning=streamed.reasoning,
        )
        namespace["_chat"] = reply  # also when the JSON below does not parse: the text stays reachable
        if not args.no_history:
            conversation.record(user, streamed.text, reasoning=streamed.reasoning)
        _after_reply(shell, args, reply, used)
        if parse is not None:
            reply.data = parse(streamed.text)
    except MrNotebookError as error:
        if error.user_error:
            raise short_error(error) from None
        raise
    if args.output:
        namespace[args.output] = reply.data if parse is not None else reply


def _after_reply(shell: Any, args: Any, reply: ChatReply, used: list[str]) -> None:
    """The token view, --insert, and the prompt's size."""
    if args.logprobs:
        from mr_notebook.kernel.tokens import TokenView

        show(TokenView(str(reply), reply.logprobs or []))
    if args.insert:
        code = first_code_block(str(reply))
        if code is None:
            _say("(--insert: the reply has no code block to insert.)")
        else:
            shell.set_next_input(code, replace=False)
    if used and reply.usage and "prompt_tokens" in reply.usage:
        _say(f"(Prompt: {reply.usage['prompt_tokens']:,} tokens, with {', '.join('{' + u + '}' for u in used)}.)")


def _parallel(engine: Any, model: str) -> int:
    """How many sequences the model serves at once (``n`` may not exceed it)."""
    from mr_notebook.workflows.map import model_parallel

    return model_parallel(engine, model, engine.inspect(model))


def _forked(
    engine: Any, model: str, messages: list[dict[str, Any]], params: dict[str, Any], n: int
) -> Callable[[int], Callable[[], Any]]:
    """Openers of the ``n`` choices of ONE request (one prompt evaluation, forked): the first opens it."""
    opened: list[Any] = []
    lock = threading.Lock()

    def opener(index: int) -> Callable[[], Any]:
        def open_choice() -> Any:
            with lock:
                if not opened:
                    opened.extend(engine.chat_choices(model, messages, n, **params))
            return opened[index]

        return open_choice

    return opener


def _compare(shell: Any, state: KernelState, args: Any, models: list[str], user: str, params: dict[str, Any]) -> None:
    """``--models a,b`` × ``-n N``: every reply side by side; ``_chat`` is the list of replies."""
    from mr_notebook.kernel.compare import Run, run_all

    engine = state.engine
    messages = [
        *([{"role": "system", "content": args.system}] if args.system else []),
        {"role": "user", "content": user},
    ]
    base_seed = args.seed if args.seed is not None else random.randrange(2**31)
    runs = []
    for model in models:
        forked = args.n > 1 and args.n <= _parallel(engine, model)
        opener = _forked(engine, model, messages, {**params, "seed": base_seed}, args.n) if forked else None
        for sample in range(args.n):
            # Sample i uses seed S + i: the engine forks its sequences that way, and so do separate requests.
            run_params = {**params, "seed": base_seed + sample} if args.n > 1 else dict(params)
            label = model if args.n == 1 else f"{model} · sample {sample + 1}"
            runs.append(Run(label, model, run_params, opener=opener(sample) if opener is not None else None))
    source = ProvenanceSource(engine)
    records = [source.record(run.model, {**run.params, **({"n": args.n} if run.opener else {})}) for run in runs]

    def metadata() -> dict[str, Any]:
        for run, provenance in zip(runs, records, strict=True):
            provenance.update(ttft=run.ttft, tokens_per_second=run.rate)
        return {METADATA_KEY: {"provenance": records}}

    try:
        run_all(shell, engine, runs, messages, metadata)
    except KeyboardInterrupt:
        raise GenerationStopped from None
    metadata()  # also without a notebook front end
    replies = []
    for run, provenance in zip(runs, records, strict=True):
        state.used_models[run.model] = provenance["digest"]
        replies.append(
            ChatReply(
                run.text,
                model=run.model,
                messages=[*messages, {"role": "assistant", "content": run.text}],
                usage=run.usage,
                finish_reason=run.finish_reason,
                provenance=provenance,
                reasoning=run.reasoning,
            )
        )
    shell.user_ns["_chat"] = replies
    if args.output:
        shell.user_ns[args.output] = replies
