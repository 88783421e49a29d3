"""gpt-oss answers (OpenAI's "harmony" format): reasoning, content and tool calls told apart by channel.

A gpt-oss answer is a run of messages, each a header and a body::

    <|channel|>analysis<|message|>…reasoning…<|end|>
    <|start|>assistant<|channel|>final<|message|>…the answer…<|return|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": …}<|call|>

The markers are control tokens: the engine shows them for models whose template speaks harmony (engine
``tool_grammar`` family ``gpt_oss``), since without them the channels cannot be told apart. ``analysis`` is
reasoning, ``final`` (and ``commentary`` without a recipient) is content, ``commentary`` addressed
``to=functions.NAME`` is a call whose body is the arguments' JSON. llama.cpp's server reads it the same way
(common/chat.cpp, gpt-oss). Model text is untrusted: a body that does not parse stays content.
"""

from __future__ import annotations

import json
import re
from typing import Any

from mr_notebook.api.tools import ToolCall, held_back

START, CHANNEL, MESSAGE, END = "<|start|>", "<|channel|>", "<|message|>", "<|end|>"
#: Markers that end a message body (``<|call|>`` and ``<|return|>`` end the answer: the engine stops there).
_BODY_ENDS = (END, "<|call|>", "<|return|>", START)
_HEADER_STARTS = (START, CHANNEL, "to=")  # the recipient may come before the channel
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*(\w+)")


def template_speaks_harmony(template: str | None) -> bool:
    return CHANNEL in (template or "")


class HarmonySplitter:
    """The :class:`~mr_notebook.api.tools.Splitter` interface for harmony answers (``feed`` / ``finish``)."""

    def __init__(self, tools: dict[str, dict[str, Any]] | None = None) -> None:
        self.tools = tools or {}
        self.mode = "start"  # start → header → body → start …; "plain" when the text is not harmony at all
        self.buffer = ""
        self.kind = "content"  # what the current body is: content, reasoning or call
        self.recipient = ""
        self.call_body = ""
        self.calls: list[ToolCall] = []
        self.failed: list[str] = []  # call bodies that did not parse, shown as content at the end

    def _header(self, header: str) -> None:
        named = _CHANNEL_NAME.search(header)
        channel = named.group(1) if named else ""
        found = _RECIPIENT.search(header)
        self.recipient = found.group(1) if found else ""
        if self.recipient.startswith("functions.") and self.tools:
            self.kind, self.call_body = "call", ""
        elif channel == "analysis":
            self.kind = "reasoning"
        else:
            self.kind = "content"

    def _end_body(self) -> None:
        if self.kind != "call":
            return
        name = self.recipient.removeprefix("functions.")
        try:
            arguments = json.loads(self.call_body, strict=False) if self.call_body.strip() else {}
        except json.JSONDecodeError:
            arguments = None
        if isinstance(arguments, dict) and name:
            self.calls.append(ToolCall(name, arguments))
        else:
            self.failed.append(self.call_body)

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.mode == "plain":
            return [("content", text)] if text else []
        out: list[tuple[str, str]] = []
        self.buffer += text
        while self.buffer:
            if self.mode == "start":
                lead = self.buffer.lstrip()
                if not lead:
                    return out
                if any(lead.startswith(m) for m in _HEADER_STARTS):
                    self.buffer, self.mode = lead, "header"
                elif any(m.startswith(lead) for m in _HEADER_STARTS):
                    return out  # a marker may be arriving
                else:
                    self.mode = "plain"  # not harmony (a template that only mentions the channels)
                    out.append(("content", self.buffer))
                    self.buffer = ""
                    return out
            elif self.mode == "header":
                at = self.buffer.find(MESSAGE)
                if at < 0:
                    return out  # headers are short; wait for the whole of it
                self._header(self.buffer[:at])
                self.buffer, self.mode = self.buffer[at + len(MESSAGE) :], "body"
            else:  # body
                ends = [i for i in (self.buffer.find(m) for m in _BODY_ENDS) if i >= 0]
                cut = min(ends) if ends else len(self.buffer) - held_back(self.buffer, _BODY_ENDS)
                self._body(self.buffer[:cut], out)
                self.buffer = self.buffer[cut:]
                if not ends:
                    return out
                self._end_body()
                if self.buffer.startswith(END):
                    self.buffer = self.buffer[len(END) :]
                self.mode = "start"
        return out

    def _body(self, text: str, out: list[tuple[str, str]]) -> None:
        if not text:
            return
        if self.kind == "call":
            self.call_body += text
        else:
            out.append((self.kind, text))

    def finish(self) -> tuple[list[tuple[str, str]], list[ToolCall]]:
        out: list[tuple[str, str]] = []
        if self.mode == "body":
            self._body(self.buffer, out)
            self._end_body()
        elif self.mode != "start" and self.buffer:
            out.append(("content", self.buffer))  # an unfinished header: show what came
        self.buffer = ""
        out += [("content", body) for body in self.failed if body]
        return out, self.calls
