"""`mr-notebook run`'s chat in a terminal: a streamed answer, or a conversation like `docker model run`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mr_notebook.client import Engine


def answer(engine: Engine, model: str, messages: list[dict[str, Any]]) -> str:
    """Stream the answer to stdout; a thinking model's reasoning goes to stderr as it comes (dimmed on a
    terminal, as `%model run` shows it), so `mr-notebook run M "q" > answer.txt` keeps only the answer."""
    parts: list[str] = []
    shown, thinking = 0, False
    dim, reset = ("\x1b[2m", "\x1b[0m") if sys.stderr.isatty() else ("", "")
    with engine.chat_stream(model, messages) as stream:
        for text in stream:
            if len(stream.reasoning) > shown:
                sys.stderr.write((dim if not shown else "") + stream.reasoning[shown:])
                shown, thinking = len(stream.reasoning), True
                sys.stderr.flush()
            if text and thinking:  # the answer begins: close the reasoning with a blank line
                sys.stderr.write(reset + "\n\n")
                thinking = False
            parts.append(text)
            print(text, end="", flush=True)
    if thinking:
        sys.stderr.write(reset + "\n")
    print()
    return "".join(parts)


def interactive(engine: Engine, model: str) -> int:
    """A chat in the terminal, like `docker model run`: history kept, /bye leaves, \"\"\" for several lines."""
    print(f'Chatting with {model}. Send /bye to leave; start and end a message with """ for several lines.')
    from mr_notebook.conversation import Conversation

    conversation = Conversation()  # the type %%chat and the chat widget keep
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if line.strip() == "/bye":
            return 0
        if line.startswith('"""'):
            lines = [line[3:]]
            while not lines[-1].endswith('"""'):
                try:
                    lines.append(input(". "))
                except EOFError:
                    break
            line = "\n".join(lines).removesuffix('"""').strip()
        if not line.strip():
            continue
        try:
            reply = answer(engine, model, conversation.messages(line))
        except KeyboardInterrupt:
            print("\n(stopped)")
            continue
        conversation.record(line, reply)
