"""``%%chat``: the cell is the user message, the reply streams into the output and lands in ``_chat``."""

from __future__ import annotations

import json
from typing import Any

from IPython.core.error import UsageError

from mr_notebook.errors import MrNotebookError
from mr_notebook.kernel.braces import resolve, substitute
from mr_notebook.kernel.display import StreamView, rich_frontend, short_error
from mr_notebook.kernel.parsing import HelpShown, chat_parser, split
from mr_notebook.kernel.state import KernelState


class ReplyNotJSON(MrNotebookError, ValueError):
    """``--json``/``--schema`` asked for JSON and the model's reply does not parse."""

    code = "reply_not_json"
    http_status = 502


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

    def __new__(
        cls,
        text: str,
        *,
        model: str,
        messages: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        finish_reason: str | None = None,
        data: Any = None,
    ) -> ChatReply:
        reply = super().__new__(cls, text)
        reply.model, reply.messages, reply.usage = model, messages, usage
        reply.finish_reason, reply.data = finish_reason, data
        return reply


def stream_reply(
    shell: Any, state: KernelState, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
) -> tuple[str, dict[str, int] | None, str | None]:
    """Stream one answer into the cell output; (text, usage, finish_reason). Interrupt stops the engine."""
    view = StreamView(rich_frontend(shell))
    parts: list[str] = []
    stream = state.engine.chat_stream(model, messages, **params)
    try:
        with stream:  # leaving the block (an interrupt included) closes it: the engine stops generating
            for delta in stream:
                parts.append(delta)
                view.update("".join(parts))
    except KeyboardInterrupt:
        view.finish("".join(parts) + ("\n\n" if parts else "") + "*[stopped]*")
        raise GenerationStopped from None
    text = "".join(parts)
    view.finish(text)
    return text, stream.usage, stream.finish_reason


def _response_format(args: Any, namespace: dict[str, Any]) -> tuple[dict[str, Any] | None, Any]:
    """(the response_format to send, what parses the reply) for ``--json`` / ``--schema``."""
    if args.json:
        return {"type": "json_object"}, None
    if args.schema is None:
        return None, None
    value = resolve(args.schema, namespace)
    model_class = None
    if isinstance(value, type) and hasattr(value, "model_json_schema"):  # a pydantic model
        model_class, schema = value, value.model_json_schema()
    elif isinstance(value, dict):
        schema = value
    else:
        try:
            schema = json.loads(args.schema)
        except ValueError:
            raise UsageError(
                f"--schema {args.schema!r} is neither a variable holding a JSON schema (dict or "
                "pydantic model) nor JSON text."
            ) from None
        if not isinstance(schema, dict):
            raise UsageError("--schema must be a JSON object (a JSON schema).")
    name = str(schema.get("title") or "reply").replace(" ", "_")[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}, model_class


def _parse(text: str, model_class: Any) -> Any:
    try:
        if model_class is not None:
            return model_class.model_validate_json(text)
        return json.loads(text)
    except ValueError as exc:
        raise ReplyNotJSON(
            f"The reply is not valid JSON ({exc}); the text is in _chat. Try a larger "
            "--max-tokens, or a model that follows JSON instructions better."
        ) from None


def chat_cell(shell: Any, state: KernelState, line: str, cell: str) -> None:
    """Run one ``%%chat`` cell."""
    namespace: dict[str, Any] = shell.user_ns
    try:
        args = chat_parser().parse_magic(split(line, namespace))
    except HelpShown:
        return
    try:
        model = args.model or state.default_model
        if not model:
            raise UsageError(
                "No model chosen: load one with `%model run MODEL` (then %%chat uses it), or "
                "name it with `%%chat -m MODEL`. `%model list` shows the stored models."
            )
        response_format, model_class = _response_format(args, namespace)
        user = substitute(cell.strip("\n"), namespace)
        conversation = state.conversation(model)
        if args.new:
            conversation.reset()
        if args.system is not None and not args.no_history:
            conversation.system = args.system
        messages = conversation.messages(user, history=not args.no_history, system=args.system)
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
        text, usage, finish_reason = stream_reply(shell, state, model, messages, params)
        reply = ChatReply(
            text,
            model=model,
            messages=[*messages, {"role": "assistant", "content": text}],
            usage=usage,
            finish_reason=finish_reason,
        )
        namespace["_chat"] = reply  # also when the JSON below does not parse: the text stays reachable
        if not args.no_history:
            conversation.record(user, text)
        if response_format is not None:
            reply.data = _parse(text, model_class)
    except MrNotebookError as error:
        if error.user_error:
            raise short_error(error) from None
        raise
    if args.output:
        namespace[args.output] = reply.data if response_format is not None else reply
