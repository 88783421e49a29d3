"""Lazy grammars for ``tool_choice: auto``: free text until the family's call marker, then only valid calls.

llama.cpp's server does this for tool-calling models (``llama_sampler_init_grammar_lazy_patterns``): the
grammar waits for a trigger (a regular expression over the text so far, or a control token such as Llama 3's
``<|python_tag|>``), then constrains the rest of the answer to the family's call syntax with the tools' JSON
schemas, so a call the model starts always parses. The API layer (``api/tools.py``) says which family and
which call schema; the trigger texts and wrapper rules are fixed here, never taken from a request.

llama.cpp replays the text from the trigger's first capture group onwards into the grammar and aborts the
process if the grammar cannot take it. Every pattern therefore ends at ``$`` and captures only text the
wrapper rule accepts (the marker and a little whitespace), never a model-chosen tail.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from llama_cpp import llama_grammar

from mr_notebook.engine.llama.model import Model
from mr_notebook.engine.params import check_schema

log = logging.getLogger(__name__)

#: The root rule of the wrapper (the JSON-schema converter names its own rules after properties and "root").
TOOLS_ROOT = "mr-tc-tools"
_WS = "[ \\t\\n]{0,8}"  # GBNF and ECMAScript alike: the whitespace allowed around markers
_JSON_SEP = "[ \\t\\n,;]{0,4}"  # between bare JSON calls
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
#: A bare JSON call at the very start of the answer, up to the quote that opens the tool's name.
_BARE_OPENING = '(\\{ ?"name" ?: ?"?)'
_BARE_START = "^[ \\t\\n]{0,8}" + _BARE_OPENING + "$"
#: The start of a JSON call object, as the converter's grammar spells it ("{", an optional space, a quote).
_OBJECT_START = '\\{ ?"?'
#: Control tokens that spell a call, per family: shown as text while tools are offered (the parser needs them).
MARKERS: dict[str, tuple[str, ...]] = {
    "hermes": (_OPEN, _CLOSE),
    "qwen3_xml": (_OPEN, _CLOSE),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    "generic": (_OPEN, _CLOSE),
    # gpt-oss: channels tell reasoning, answer and calls apart (kept for every answer, tools or not).
    "gpt_oss": ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|constrain|>"),
}


@dataclass(frozen=True)
class ToolGrammar:
    """A lazy grammar (``text`` None: markers only) and the control tokens to show."""

    text: str | None
    patterns: tuple[str, ...]
    tokens: tuple[int, ...]
    preserved: frozenset[int]


def literal(text: str) -> str:
    """``text`` as a GBNF string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _marker(marker: str, tail: str = "") -> str:
    """The marker, whitespace, and optionally the start of what follows (a token may carry both), captured."""
    return "(" + re.escape(marker) + _WS + (f"(?:{tail})?" if tail else "") + ")"


def _patterns(openings: list[str], bare: bool, thinks: bool) -> list[str]:
    """Trigger patterns: each opening at the end of the text so far (llama.cpp searches the whole text).

    For a model that reasons in ``<think>`` blocks a marker counts only at the start of the answer or right
    after ``</think>`` (as llama.cpp's own patterns), so a call written inside the reasoning does not switch
    the grammar on. A pattern with both ``^`` and ``$`` is matched against the whole text, so it is short by
    construction: no pattern runs over the whole answer (libstdc++'s regex recurses once per character).
    """
    if not thinks:
        return [o + "$" for o in openings] + ([_BARE_START] if bare else [])
    every = [*openings, _BARE_OPENING] if bare else openings
    return [f"^{_WS}{o}$" for o in every] + [f"</think>{_WS}{o}$" for o in every]


def _json_rules(call_schema: dict[str, Any]) -> str:
    """The converter's grammar for one call object (its rule ``root``)."""
    check_schema(call_schema)
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(call_schema)))


def _repeat(rule: str, separator: str, parallel: bool) -> str:
    return f"{rule} ({separator} {rule})*" if parallel else rule


def _xml_rules(params: dict[str, list[str]]) -> str:
    """Qwen 3 coder's ``<function=NAME><parameter=P>value</parameter></function>``, names held to the tools."""
    functions, rules = [], []
    for i, (name, keys) in enumerate(params.items()):
        body = "mr-tc-ws"
        if keys:
            choice = " | ".join(literal(k) for k in keys)
            rules.append(f'mr-tc-p{i} ::= ("<parameter=" ({choice}) ">" mr-tc-value "</parameter>" mr-tc-ws)*')
            body = f"mr-tc-ws mr-tc-p{i}"
        functions.append(f"{literal(name + '>')} {body}")
    rules.append("mr-tc-fn ::= " + " | ".join(functions))
    rules.append('mr-tc-value ::= ([^<] | "<" [^/])*')
    return "\n".join(rules)


def _grammar(spec: dict[str, Any]) -> tuple[str, list[str]]:
    """The wrapper grammar of a family and its trigger patterns."""
    text, openings, bare = _family_grammar(spec)
    return text, _patterns(openings, bare, bool(spec.get("thinks")))


def _family_grammar(spec: dict[str, Any]) -> tuple[str, list[str], bool]:
    """The wrapper grammar, the openings that start a call, and whether a bare JSON reply is one."""
    family, parallel = spec["family"], bool(spec.get("parallel"))
    rules = [f"mr-tc-ws ::= {_WS}"]
    if family == "qwen3_xml":
        rules.append(_xml_rules(spec["params"]))
        call = f'"{_OPEN}" mr-tc-ws "<function=" mr-tc-fn "</function>" mr-tc-ws "{_CLOSE}"'
        rules.append(f"mr-tc-call ::= {call}")
        rules.append(f"{TOOLS_ROOT} ::= {_repeat('mr-tc-call', 'mr-tc-ws', parallel)}")
        return "\n".join(rules), [_marker(_OPEN, "<")], False
    rules.insert(0, _json_rules(spec["call"]))
    if family in ("hermes", "generic"):
        rules.append(f'mr-tc-call ::= "{_OPEN}" mr-tc-ws root mr-tc-ws "{_CLOSE}"')
        wrapped = _repeat("mr-tc-call", "mr-tc-ws", parallel)
        if family == "hermes":
            rules.append(f"{TOOLS_ROOT} ::= {wrapped}")
            return "\n".join(rules), [_marker(_OPEN, _OBJECT_START)], False
        rules.append(f"{TOOLS_ROOT} ::= {wrapped} | {_repeat('root', _JSON_SEP, parallel)}")
        return "\n".join(rules), [_marker(_OPEN, _OBJECT_START)], True
    if family == "llama3":
        bare = _repeat("root", _JSON_SEP, parallel)
        rules.append(f'{TOOLS_ROOT} ::= "<|python_tag|>" mr-tc-ws {bare} | {bare}')
        return "\n".join(rules), [_marker("<|python_tag|>", _OBJECT_START)], True
    if family == "mistral":
        calls = _repeat("root", 'mr-tc-ws "," mr-tc-ws', parallel)
        rules.append(f'{TOOLS_ROOT} ::= "[TOOL_CALLS]" mr-tc-ws "[" mr-tc-ws {calls} mr-tc-ws "]"')
        return "\n".join(rules), [_marker("[TOOL_CALLS]", "\\[ ?(?:" + _OBJECT_START + ")?")], False
    raise ValueError(f"no tool grammar for family {family!r}")


def tool_grammar(model: Model, spec: dict[str, Any]) -> ToolGrammar | None:
    """The lazy grammar and preserved tokens for ``spec`` (from the API layer), or None for an unknown family.

    A grammar that cannot be built (a schema the converter or llama.cpp cannot take) leaves the answer free:
    ``auto`` is the default whenever tools are offered, and an unusual schema must not make every such
    request fail; the parser still reads what the model writes.
    """
    family = spec.get("family")
    if family not in MARKERS:
        return None
    specials = model.specials()
    markers = [specials[m] for m in MARKERS[family] if m in specials]
    preserved = frozenset(markers)
    if not spec.get("grammar", True):
        return ToolGrammar(None, (), (), preserved)
    try:
        text, patterns = _grammar(spec)
    except Exception as exc:  # the schema converter raises assorted errors for schemas it cannot express
        log.debug("no lazy tool grammar for this request: %s", exc)
        return ToolGrammar(None, (), (), preserved)
    # A marker that is one control token triggers by its id too (its text never reaches the pattern check
    # when llama.cpp renders the piece differently).
    opening = MARKERS[family][0]
    tokens = (specials[opening],) if opening in specials else ()
    return ToolGrammar(text, tuple(patterns), tokens, preserved)
