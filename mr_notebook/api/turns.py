"""One assistant turn, whatever protocol asked for it: run the engine, split reasoning, content and tool calls.

The OpenAI, Ollama and Anthropic routes each translate their request into an OpenAI chat body (the engine's
language), run :func:`run_turn`, and render the :class:`TurnEvent` s it yields in their own shape.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import tornado.web

from mr_notebook.api import tools as toolkit
from mr_notebook.api.base import describe_error
from mr_notebook.api.harmony import HarmonySplitter
from mr_notebook.api.tool_choice import call_format, lazy_grammar, parse_tool_choice, parse_tools
from mr_notebook.engine import Chunk, GenerationParams, Runner, Usage
from mr_notebook.errors import InvalidRequest
from mr_notebook.store import CHAT_TEMPLATE_MEDIA_TYPE, parse_ref

if TYPE_CHECKING:
    from mr_notebook.api.context import ApiContext
    from mr_notebook.store import ModelRecord, Store

#: Application-settings key of the per-model traits cache (keyed by model id and configured template).
TRAITS_KEY = "mr_notebook_model_traits"


@dataclass(frozen=True)
class ModelTraits:
    """What the API layer reads from a model's chat template and header."""

    template: str
    family: str
    thinks: bool
    think_open: bool
    tools: bool
    architecture: str
    context_length: int
    embedding: bool

    def capabilities(self) -> list[str]:
        """Ollama's ``capabilities`` list."""
        found = ["embedding"] if self.embedding else ["completion"]
        if self.tools and not self.embedding:
            found.append("tools")
        if self.thinks and not self.embedding:
            found.append("thinking")
        return found


def template_of(store: Store, record: ModelRecord) -> str:
    """The template the engine renders: the configured one, a packaged template file, else the GGUF's own."""
    from mr_notebook.store.gguf_header import read_header

    configured = record.settings.get("chat_template")
    if isinstance(configured, str) and configured:
        return configured
    files = store.paths(record, CHAT_TEMPLATE_MEDIA_TYPE)
    if files:
        return files[0].read_text(encoding="utf-8")
    value = read_header(store.model_file(record)).fields.get("tokenizer.chat_template")
    return value if isinstance(value, str) else ""


def _read_traits(store: Store, name: str) -> ModelTraits:
    record = store.get(name)
    template = template_of(store, record)
    arch = str(record.config.get("architecture") or "unknown")
    return ModelTraits(
        template=template,
        family=toolkit.detect_family(template),
        thinks=toolkit.template_thinks(template),
        think_open=toolkit.template_opens_think(template),
        tools=toolkit.template_uses_tools(template),
        architecture=arch,
        context_length=int(record.hints.get("context_length") or record.config.get("context_size") or 0),
        embedding=record.hints.get("pooling") is not None,
    )


#: A remote engine's model (H-remote): its engine applies the template; the engine's structured tool calls and
#: reasoning come back as Hermes ``<tool_call>`` and ``<think>`` text (engine/remote/proxy.py) for the splitter.
REMOTE_TRAITS = ModelTraits("", "hermes", True, False, True, "remote", 0, False)


async def model_traits(ctx: ApiContext, settings: dict[str, Any], name: str) -> ModelTraits:
    """The traits of a stored model (ModelNotFound if absent), cached per model id."""
    if ctx.runner.remote.resolve(name) is not None:
        return REMOTE_TRAITS
    record = await asyncio.to_thread(ctx.store.get, name)
    cache: dict[tuple[str, str], ModelTraits] = settings.setdefault(TRAITS_KEY, {})
    # A configured template replaces the file's without changing the model's id.
    key = (record.id, str(record.settings.get("chat_template") or ""))
    traits = cache.get(key)
    if traits is None:
        traits = await asyncio.to_thread(_read_traits, ctx.store, name)
        if len(cache) > 256:  # a bound, for a server that sees many models over its life
            cache.clear()
        cache[key] = traits
    return traits


# ---------------------------------------------------------------------------------------------- requests

#: reasoning: "split" (reasoning apart from content), "drop" (reasoning removed) or "raw" (left in content).
REASONING_MODES = ("split", "drop", "raw")


@dataclass
class TurnRequest:
    """A chat turn in the engine's terms, with what the API layer does around it."""

    model: str
    body: dict[str, Any]
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    choice: str = "none"
    forced: str | None = None
    parallel: bool = True
    reasoning: str = "split"


def template_messages(messages: Any) -> Any:
    """Tool-call arguments as objects, which is what chat templates expect (``arguments | tojson``).

    llama.cpp's server does the same before rendering; OpenAI clients send them as JSON strings.
    """
    if not isinstance(messages, list):
        return messages
    out = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if isinstance(calls, list):
            fixed = []
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                    try:
                        arguments = json.loads(function["arguments"] or "{}")
                    except json.JSONDecodeError:
                        raise InvalidRequest(
                            "messages: a tool call's function.arguments is not valid JSON; send the arguments "
                            "the model produced, unchanged.",
                            "messages",
                        ) from None
                    call = {**call, "function": {**function, "arguments": arguments}}
                fixed.append(call)
            message = {**message, "tool_calls": fixed}
        out.append(message)
    return out


def openai_turn(model: str, body: dict[str, Any]) -> TurnRequest:
    """The turn an OpenAI chat body asks for: tools, tool choice, parallel calls, reasoning format."""
    tools = parse_tools(body.get("tools"))
    choice, forced = parse_tool_choice(body.get("tool_choice"), tools)
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidRequest("parallel_tool_calls must be true or false.", "parallel_tool_calls")
    reasoning_format = body.get("reasoning_format")
    if reasoning_format is not None and reasoning_format not in ("none", "auto", "deepseek", "deepseek-legacy"):
        raise InvalidRequest('reasoning_format must be "none", "auto" or "deepseek".', "reasoning_format")
    effort = body.get("reasoning_effort")
    kwargs = body.get("chat_template_kwargs")
    if isinstance(effort, str) and (kwargs is None or isinstance(kwargs, dict)):
        # OpenAI's reasoning_effort is what gpt-oss templates read; an explicit template kwarg wins.
        body = {**body, "chat_template_kwargs": {"reasoning_effort": effort, **(kwargs or {})}}
    return TurnRequest(
        model=model,
        body=body,
        tools=tools,
        choice=choice,
        forced=forced,
        parallel=parallel,
        reasoning="raw" if reasoning_format == "none" else "split",
    )


def engine_params(ctx: ApiContext, turn: TurnRequest, traits: ModelTraits | None = None) -> GenerationParams:
    """The engine's parameters; ``required`` / named tool choices become a grammar of the tools' schemas.

    With ``traits``, ``auto`` gets a lazy grammar of the model's call syntax (free text until a call starts).
    """
    body = dict(turn.body)
    if turn.tools and turn.choice == "required":
        body["response_format"] = call_format(turn.tools, turn.forced, turn.parallel)
    if turn.choice == "none":
        body.pop("tools", None)  # the template then does not offer them (llama.cpp does the same)
    params = GenerationParams.from_request(body)
    if traits is None or traits is REMOTE_TRAITS:
        return _capped(ctx, params)
    if turn.tools and turn.choice == "auto":
        params.tool_grammar = lazy_grammar(
            traits.family, turn.tools, turn.parallel, traits.template, thinks=traits.thinks
        )
    elif traits.family == toolkit.HARMONY:
        params.tool_grammar = {"family": toolkit.HARMONY, "grammar": False}  # channels shown for every answer
    return _capped(ctx, params)


def _capped(ctx: ApiContext, params: GenerationParams) -> GenerationParams:
    """``params`` with ``max_tokens`` held to the host's cap (``c.MrNotebook.max_tokens``)."""
    cap = ctx.limits.max_tokens
    if cap is not None and (params.max_tokens is None or params.max_tokens > cap):
        params.max_tokens = cap
    return params


# ---------------------------------------------------------------------------------------------- running


@dataclass
class TurnEvent:
    """``content`` / ``reasoning`` text, one ``call``, a choice's ``finish``, or the final ``done`` (usage)."""

    kind: str
    text: str = ""
    call: toolkit.ToolCall | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    #: OpenAI ``logprobs.content`` entries of the tokens up to this event (when the request asked for them).
    logprobs: list[dict[str, Any]] | None = None
    #: Which of the ``n`` choices this event belongs to.
    index: int = 0
    #: On ``done``: the stop string that ended the answer, when one did (the engine matched it).
    stop_sequence: str | None = None


@dataclass
class Timing:
    """When the turn started, when the first and last chunks came (for metrics and Ollama's durations)."""

    started: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    #: The prompt's length in tokens, as soon as the engine says (before the answer's first event).
    prompt_tokens: int | None = None


class _Choice:
    """One of the ``n`` answers of a turn: its splitter, its pending logprobs, whether it has ended."""

    def __init__(self, index: int, turn: TurnRequest, traits: ModelTraits) -> None:
        reasoning = turn.reasoning != "raw" and traits.thinks
        self.index, self.turn, self.ended = index, turn, False
        self.splitter: toolkit.Splitter | HarmonySplitter
        if traits.family == toolkit.HARMONY and turn.reasoning != "raw" and turn.choice != "required":
            self.splitter = HarmonySplitter(turn.tools if turn.choice != "none" else None)
        else:
            self.splitter = toolkit.Splitter(
                family=traits.family if turn.tools and turn.choice != "none" else None,
                tools=turn.tools,
                reasoning=reasoning,
                think_open=reasoning and traits.think_open,
                json_calls=turn.choice == "required",
            )
        self.logprobs: list[dict[str, Any]] | None = None

    def events(self, pieces: list[tuple[str, str]]) -> list[TurnEvent]:
        out = []
        for kind, text in pieces:
            if kind == "content":
                out.append(TurnEvent(kind, text, logprobs=self.logprobs, index=self.index))
                self.logprobs = None
            elif self.turn.reasoning == "split":
                out.append(TurnEvent(kind, text, index=self.index))
        return out

    def end(self, finish: str | None) -> list[TurnEvent]:
        """What was held back, the calls, then this choice's ``finish`` event."""
        self.ended = True
        pieces, calls = self.splitter.finish()
        out = self.events(pieces)
        if not self.turn.parallel and len(calls) > 1:
            calls = calls[:1]  # parallel_tool_calls false: the client handles one call per turn
        out += [TurnEvent("call", call=call, index=self.index) for call in calls]
        reason = "tool_calls" if calls else finish
        out.append(TurnEvent("finish", finish_reason=reason, logprobs=self.logprobs, index=self.index))
        return out


async def run_turn(
    stream: AsyncIterator[Chunk], turn: TurnRequest, traits: ModelTraits, timing: Timing | None = None
) -> AsyncIterator[TurnEvent]:
    """Events of one turn from the engine's ``stream``; the caller closes ``stream`` (which cancels work).

    Per choice (``index``; several when the request asked for ``n`` > 1): content / reasoning / call events,
    then one ``finish``. Last, one ``done`` with the usage and choice 0's finish reason.
    """
    choices: dict[int, _Choice] = {}
    finishes: dict[int, str | None] = {}
    usage = Usage()
    stop_sequence: str | None = None

    def choice(index: int) -> _Choice:
        if index not in choices:
            choices[index] = _Choice(index, turn, traits)
        return choices[index]

    async for chunk in stream:
        if timing is not None:
            now = time.perf_counter()
            timing.first = timing.first if timing.first is not None else now
            timing.last = now
            if chunk.prompt_tokens is not None:
                timing.prompt_tokens = chunk.prompt_tokens
        current = choice(chunk.index)
        if chunk.logprobs:
            current.logprobs = (current.logprobs or []) + chunk.logprobs
        if chunk.text:
            for event in current.events(current.splitter.feed(chunk.text)):
                yield event
        if chunk.finish_reason is not None and chunk.usage is None and not current.ended:
            ended = current.end(chunk.finish_reason)  # one of n > 1 choices ended
            finishes[chunk.index] = ended[-1].finish_reason
            for event in ended:
                yield event
        elif chunk.finish_reason is not None:
            finishes[chunk.index] = chunk.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
        stop_sequence = chunk.stop_sequence or stop_sequence
    choice(0)
    for index in sorted(choices):
        if not choices[index].ended:
            ended = choices[index].end(finishes.get(index))
            finishes[index] = ended[-1].finish_reason
            for event in ended:
                yield event
    yield TurnEvent("done", finish_reason=finishes.get(0), usage=usage, stop_sequence=stop_sequence)


async def close_stream(stream: Any) -> None:
    """Close an engine stream (which cancels unfinished work in the worker), on every path."""
    closer = getattr(stream, "aclose", None)
    if closer is None:
        return
    try:
        await closer()
    except RuntimeError:
        pass  # the generator is mid-step in a cancelled task; its own cleanup cancels the request


def write_family_error(
    handler: tornado.web.RequestHandler, status_code: int, kwargs: dict[str, Any], shape: Callable[[int, str], Any]
) -> None:
    """``write_error`` for a protocol with its own error body (Ollama, Anthropic): ``shape(status, message)``."""
    exc_info = kwargs.get("exc_info")
    exc = exc_info[1] if exc_info else None
    status, body = describe_error(exc, status_code, handler.request.method or "", handler.request.path)
    if status != status_code:
        handler.set_status(status)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        handler.set_header("Retry-After", str(retry_after))
    handler.set_header("Content-Type", "application/json")
    handler.finish(json.dumps(shape(status, body["error"]["message"])))


def metric_label(model: str) -> str:
    try:
        return str(parse_ref(model))  # one series per model, however it was spelled
    except ValueError:
        return model


#: Fill-in-the-middle markers of the code-model families (prefix, suffix, middle), in prompt order.
FIM_MARKERS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen 2.5 coder, CodeGemma's cousins
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<|fim_begin|>", "<|fim_hole|>", "<|fim_end|>"),  # DeepSeek coder ("▁" spelled as "_" by some)
    ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),  # DeepSeek coder
    ("<PRE>", "<SUF>", "<MID>"),  # Code Llama
)


async def fill_in_the_middle(runner: Runner, model: str, prefix: str, suffix: str) -> str:
    """The prompt that asks ``model`` for the text between ``prefix`` and ``suffix``, in its own FIM tokens."""
    for start, hole, end in FIM_MARKERS:
        # A marker the vocabulary knows is one token; otherwise it splits into pieces.
        counts = [len(await runner.tokenize(model, marker)) for marker in (start, hole, end)]
        if counts == [1, 1, 1]:
            if start == "<PRE>":
                return f"<PRE> {prefix} <SUF>{suffix} <MID>"
            return f"{start}{prefix}{hole}{suffix}{end}"
    raise InvalidRequest(
        f"Model {model} has no fill-in-the-middle tokens, so suffix cannot be used with it; use a code model "
        "(Qwen 2.5 Coder, StarCoder, Code Llama, DeepSeek Coder) or send the prompt without suffix.",
        "suffix",
    )
