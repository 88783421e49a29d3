"""Tool calls and reasoning in generated text: formats by model family, a streaming splitter, tool grammars.

Models write tool calls as text in their family's format (the chat template tells which family a model is):

* ``hermes``: Hermes / Qwen 2.5 — ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``
* ``qwen3_xml``: Qwen 3 coder — ``<tool_call><function=NAME><parameter=P>value</parameter></function></tool_call>``
* ``llama3``: Llama 3.x — a bare ``{"name": …, "parameters": {…}}`` reply, or ``<|python_tag|>`` then JSON
* ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": {…}}]`` (or ``[TOOL_CALLS]NAME[ARGS]{…}``)
* ``generic``: a reply that is a JSON call object (or a list of them), or a ``<tool_call>`` block

llama.cpp's server has one C++ parser per family (common/chat.cpp); these are their Python counterparts, kept
to the formats above. Model text is untrusted: a block that does not parse stays plain content, never an error.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("hermes", "qwen3_xml", "llama3", "mistral", "generic")
#: gpt-oss (harmony channels): parsed by api/harmony.py, not by the Splitter below.
HARMONY = "gpt_oss"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

#: Text that starts a tool call, per family.
_MARKERS: dict[str, tuple[str, ...]] = {
    "hermes": ("<tool_call>",),
    "qwen3_xml": ("<tool_call>", "<function="),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]",),
    "generic": ("<tool_call>",),
}
#: Families whose calls may be a bare JSON reply (only when nothing else was said before it). Llama 3's
#: <|python_tag|> and Mistral's [TOOL_CALLS] are control tokens, which a stream may not show.
_JSON_START = frozenset({"llama3", "mistral", "generic"})


def detect_family(template: str | None) -> str:
    """The tool-call format of a model, from its chat template."""
    text = template or ""
    if "<|channel|>" in text:
        return HARMONY
    if "<tool_call>" in text and ("<function=" in text or "<parameter=" in text):
        return "qwen3_xml"
    if "<tool_call>" in text:
        return "hermes"
    if "[TOOL_CALLS]" in text or "[AVAILABLE_TOOLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or ("<|start_header_id|>" in text and "parameters" in text):
        return "llama3"
    return "generic"


def template_thinks(template: str | None) -> bool:
    """Whether the template knows reasoning blocks (Qwen 3, DeepSeek R1 distills, gpt-oss channels …)."""
    text = template or ""
    return THINK_OPEN in text or THINK_CLOSE in text or "enable_thinking" in text or "<|channel|>" in text


def template_opens_think(template: str | None) -> bool:
    """Whether the generation prompt ends inside ``<think>`` (R1 distills): the reply starts as reasoning."""
    text = template or ""
    for match in re.finditer(r"add_generation_prompt", text):
        window = text[match.end() : match.end() + 300]
        opened = window.find(THINK_OPEN)
        # Qwen 3 writes an empty, closed block here when thinking is off; that is no open block.
        if opened >= 0 and THINK_CLOSE not in window[opened : opened + 40]:
            return True
    return False


def template_uses_tools(template: str | None) -> bool:
    return "tools" in (template or "") or "tool_call" in (template or "")


# ---------------------------------------------------------------------------------------------- requests


@dataclass
class ToolCall:
    """One call the model made; ``arguments`` is always an object."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------- parsing

#: Not strict: control characters inside strings (which grammars let through) still parse.
_DECODER = json.JSONDecoder(strict=False)


def _json_values(text: str) -> list[Any] | None:
    """Consecutive JSON values separated by whitespace, ',' or ';' — None if anything else is there."""
    values: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,;":
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = _DECODER.raw_decode(text, i)
        except json.JSONDecodeError:
            return None
        values.append(value)


def _as_call(data: Any) -> list[ToolCall] | None:
    """A JSON value in one of the call shapes models write, as calls (None: not a call)."""
    if isinstance(data, list):
        calls = [_as_call(item) for item in data]
        if not data or any(c is None for c in calls):
            return None
        return [call for group in calls if group for call in group]
    if not isinstance(data, dict):
        return None
    for key in ("tool_calls", "tool_call"):
        if key in data:
            return _as_call(data[key])
    if isinstance(data.get("function"), dict):
        return _as_call(data["function"])
    name = data.get("name", data.get("function"))
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return [ToolCall(name, arguments)]


def _xml_call(block: str, tools: dict[str, dict[str, Any]]) -> ToolCall | None:
    match = re.match(r"\s*<function=([^>\s]+)>(.*?)(?:</function>|$)", block, re.S)
    if match is None:
        return None
    name, body = match.group(1), match.group(2)
    properties = tools.get(name, {}).get("properties", {})
    arguments: dict[str, Any] = {}
    for param in re.finditer(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", body, re.S):
        key, raw = param.group(1), param.group(2)
        declared = properties.get(key, {}).get("type") if isinstance(properties, dict) else None
        value: Any = raw
        if declared != "string":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        arguments[key] = value
    return ToolCall(name, arguments)


def _tagged(text: str, tools: dict[str, dict[str, Any]]) -> tuple[list[ToolCall], str] | None:
    """``<tool_call>`` blocks (JSON or Qwen 3 XML) and bare ``<function=`` blocks; the rest is content."""
    calls: list[ToolCall] = []
    rest: list[str] = []
    pattern = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)|(<function=.*?(?:</function>|$))", re.S)
    end = 0
    for match in pattern.finditer(text):
        rest.append(text[end : match.start()])
        end = match.end()
        block = match.group(1) if match.group(1) is not None else match.group(2)
        if block.lstrip().startswith("<function="):
            call = _xml_call(block, tools)
            if call is None:
                return None
            calls.append(call)
            continue
        values = _json_values(block)
        found = [_as_call(v) for v in values] if values else []
        if not found or any(group is None for group in found):
            return None
        calls.extend(call for group in found if group for call in group)
    rest.append(text[end:])
    return (calls, "".join(rest).strip()) if calls else None


def _mistral(text: str) -> list[ToolCall] | None:
    body = text.split("[TOOL_CALLS]", 1)[1].strip()
    if body.startswith("["):
        values = _json_values(body)
        found = _as_call(values[0]) if values and len(values) == 1 else None
        return found
    calls = []  # newer Mistral templates: NAME[ARGS]{json} (optionally NAME[CALL_ID]id[ARGS]{json}), repeated
    for part in (p for p in body.split("[TOOL_CALLS]") if p.strip()):
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)(?:\[CALL_ID\][^\[]*)?\[ARGS\](.*)", part, re.S)
        values = _json_values(match.group(2)) if match else None
        if match is None or not values or not isinstance(values[0], dict):
            return None
        calls.append(ToolCall(match.group(1), values[0]))
    return calls or None


def parse_calls(text: str, family: str, tools: dict[str, dict[str, Any]]) -> tuple[list[ToolCall], str]:
    """Tool calls in ``text`` (the part of a reply from its first call marker on), and the content left over.

    No calls found means the text was content after all (returned unchanged).
    """
    stripped = text.strip()
    if "[TOOL_CALLS]" in stripped:
        found = _mistral(stripped)
        return (found, "") if found else ([], text)
    if "<tool_call>" in stripped or "<function=" in stripped:
        tagged = _tagged(stripped, tools)
        return tagged if tagged is not None else ([], text)
    if stripped.startswith("<|python_tag|>"):
        stripped = stripped.removeprefix("<|python_tag|>")
    values = _json_values(stripped)
    calls: list[ToolCall] = []
    for value in values or []:
        group = _as_call(value)
        if group is None:
            return [], text
        calls.extend(group)
    # A bare JSON reply is a call only if it names a tool that was offered; otherwise it is an answer in JSON.
    if not calls or any(call.name not in tools for call in calls):
        return [], text
    return calls, ""


# ---------------------------------------------------------------------------------------------- streaming


def held_back(buffer: str, markers: tuple[str, ...]) -> int:
    """How many trailing characters of ``buffer`` could be the start of a marker."""
    hold = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(buffer)), hold, -1):
            if buffer.endswith(marker[:size]):
                hold = size
                break
    return hold


class Splitter:
    """Sorts streamed text into reasoning, content and a tool-call tail, holding back only partial markers.

    ``feed`` returns the ``(kind, text)`` pieces that are safe to show now (kind ``content`` or ``reasoning``);
    ``finish`` returns what was held and the calls parsed from the tail. Content before a call streams as it
    comes; the call itself is parsed when the reply ends (arguments only parse whole).
    """

    def __init__(
        self,
        *,
        family: str | None,
        tools: dict[str, dict[str, Any]] | None = None,
        reasoning: bool = True,
        think_open: bool = False,
        json_calls: bool = False,
    ) -> None:
        self.family = family if family in FAMILIES else ("generic" if family else None)
        self.tools = tools or {}
        self.reasoning = reasoning
        self.markers = _MARKERS[self.family] if self.family and self.tools else ()
        self.json_start = bool(self.tools) and (json_calls or self.family in _JSON_START)
        self.json_only = json_calls
        self.mode = "reasoning" if reasoning and think_open else "start"
        self.buffer = ""
        self.tail = ""
        self.content_seen = False
        self.after_think = False

    def _content(self, text: str, out: list[tuple[str, str]]) -> None:
        if text:
            out.append(("content", text))
            self.content_seen = self.content_seen or bool(text.strip())

    def feed(self, text: str) -> list[tuple[str, str]]:
        if self.mode == "content" and not self.markers and not self.buffer:
            self.content_seen = self.content_seen or bool(text.strip())
            return [("content", text)] if text else []  # the common case, once per token
        out: list[tuple[str, str]] = []
        self.buffer += text
        while self.buffer:
            if self.mode == "tail":
                self.tail += self.buffer
                self.buffer = ""
            elif self.mode == "start":
                lead = self.buffer.lstrip()
                if not lead:
                    return out  # only whitespace so far: it may precede <think> or a JSON call
                if self.reasoning and not self.after_think and lead[: len(THINK_OPEN)] == THINK_OPEN[: len(lead)]:
                    if len(lead) < len(THINK_OPEN):
                        return out
                    self.buffer, self.mode = lead[len(THINK_OPEN) :], "reasoning"
                    continue
                if self.json_only or (self.json_start and not self.content_seen and lead[0] in "{["):
                    self.mode = "tail"
                    continue
                if self.after_think:
                    self.buffer = lead
                self.mode = "content"
            elif self.mode == "reasoning":
                end = self.buffer.find(THINK_CLOSE)
                if end >= 0:
                    if end:
                        out.append(("reasoning", self.buffer[:end]))
                    self.buffer = self.buffer[end + len(THINK_CLOSE) :]
                    self.mode, self.after_think = "start", True
                    continue
                hold = held_back(self.buffer, (THINK_CLOSE,))
                if len(self.buffer) > hold:
                    out.append(("reasoning", self.buffer[: len(self.buffer) - hold]))
                self.buffer = self.buffer[len(self.buffer) - hold :]
                return out
            else:  # content
                starts = [i for i in (self.buffer.find(m) for m in self.markers) if i >= 0]
                if starts:
                    self._content(self.buffer[: min(starts)], out)
                    self.buffer, self.mode = self.buffer[min(starts) :], "tail"
                    continue
                hold = held_back(self.buffer, self.markers)
                self._content(self.buffer[: len(self.buffer) - hold], out)
                self.buffer = self.buffer[len(self.buffer) - hold :]
                return out
        return out

    def finish(self) -> tuple[list[tuple[str, str]], list[ToolCall]]:
        out: list[tuple[str, str]] = []
        if self.mode == "reasoning":
            if self.buffer:
                out.append(("reasoning", self.buffer))  # an unclosed block is still reasoning (llama.cpp agrees)
        elif self.mode != "tail" and not (self.mode == "start" and self.after_think):
            self._content(self.buffer, out)
        if self.mode == "tail":
            self.tail += self.buffer
        self.buffer = ""
        calls: list[ToolCall] = []
        if self.tail:
            calls, rest = parse_calls(self.tail, self.family or "generic", self.tools)
            self._content(rest, out)
        return out, calls
