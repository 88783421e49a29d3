"""What a request asks of tools: the tools (OpenAI's shape), the tool choice, and the grammars that hold the
model to them (a strict one for ``required`` / a named tool, a lazy one for ``auto``: engine/llama/tool_grammar.py).
"""

from __future__ import annotations

import re
from typing import Any

from mr_notebook.api.tools import HARMONY
from mr_notebook.errors import InvalidRequest


def parse_tools(value: Any, param: str = "tools") -> dict[str, dict[str, Any]]:
    """OpenAI ``tools`` → {name: parameters schema}; a wrong shape is a 400 that shows the right one."""
    if value is None:
        return {}
    example = '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]'
    if not isinstance(value, list):
        raise InvalidRequest(f"{param} must be a list like {example}.", param)
    tools: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"{param}[{i}] must be a function tool like {example}.", param)
        name = function.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,128}", name):
            raise InvalidRequest(f"{param}[{i}].function.name must be 1-128 letters, digits, '_', '.' or '-'.", param)
        schema = function.get("parameters")
        if schema is None:
            schema = {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{param}[{i}].function.parameters must be a JSON schema object.", param)
        tools[name] = schema
    return tools


def parse_tool_choice(value: Any, tools: dict[str, dict[str, Any]]) -> tuple[str, str | None]:
    """OpenAI ``tool_choice`` → (``auto`` | ``none`` | ``required``, forced function name or None)."""
    if value is None:
        return ("auto" if tools else "none"), None
    if value in ("auto", "none", "required"):
        if value == "required" and not tools:
            raise InvalidRequest('tool_choice "required" needs tools to choose from.', "tool_choice")
        return str(value), None
    name = value.get("function", {}).get("name") if isinstance(value, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest(
            'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": …}}.',
            "tool_choice",
        )
    if name not in tools:
        raise InvalidRequest(f"tool_choice names {name!r}, which is not one of the tools given.", "tool_choice")
    return "required", name


def call_schema(tools: dict[str, dict[str, Any]], name: str | None = None, key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call object ``{"name": …, key: {…}}`` of ``tools`` (or of the tool ``name``)."""

    def one(tool: str) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {"name": {"const": tool}, key: tools[tool]},
            "required": ["name", key],
        }

    options = [one(t) for t in tools if name is None or t == name]
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_format(tools: dict[str, dict[str, Any]], name: str | None, parallel: bool) -> dict[str, Any]:
    """A ``response_format`` whose grammar only admits calls of ``tools`` (``required`` / a named choice)."""
    single = call_schema(tools, name)
    schema = single if name is not None or not parallel else {"anyOf": [single, {"type": "array", "items": single}]}
    return {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}


def lazy_grammar(
    family: str, tools: dict[str, dict[str, Any]], parallel: bool, template: str, thinks: bool = False
) -> dict[str, Any]:
    """What the worker needs for ``tool_choice`` auto (engine/llama/tool_grammar.py builds the grammar).

    Free text until the family's opening marker, then only calls of ``tools`` in the family's syntax; the
    family's control tokens are also shown as text, so the parser sees them.
    """
    spec: dict[str, Any] = {
        "family": family,
        "parallel": parallel,
        "thinks": thinks,  # a call counts only outside <think> … </think>
        "call": call_schema(tools, key="parameters" if family == "llama3" else "arguments"),
    }
    if family == "qwen3_xml":
        spec["params"] = {
            tool: [str(k) for k in schema["properties"]] if isinstance(schema.get("properties"), dict) else []
            for tool, schema in tools.items()
        }
    if family == HARMONY:
        spec["grammar"] = False  # channels and recipients: the markers are what the parser needs
    if family == "mistral" and "[ARGS]" in template:
        spec["grammar"] = False  # NAME[ARGS]{…} calls: markers shown, no grammar (not JSON the converter writes)
    return spec
