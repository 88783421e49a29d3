"""``{name}`` substitution in prompts that leaves every other brace alone.

Prompts are full of braces that are not placeholders: JSON, code, dict literals, Jinja. ``str.format``
(and jupyter-ai's ``%%ai``, issue #27 there) chokes on them, so this is a small tokenizer instead:

- ``{expr}`` is replaced by ``str(value)`` only when ``expr`` is a plain reference, a name followed by
  ``.attr``, ``[int]`` or ``['key']`` / ``["key"]`` steps, with no spaces, and it resolves in the
  namespace (``{name}``, ``{obj.attr}``, ``{rows[0]}``, ``{cfg['key']}``). No code is evaluated.
- ``{{expr}}`` around such a reference is the escape: it gives ``{expr}`` literally.
- Anything else (``{"a": 1}``, ``{{ jinja }}``, ``{x + 1}``, an unknown name, ``}}`` closing nested JSON)
  goes through unchanged.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_STEP = rf"(?:\.{_NAME}|\[-?\d+\]|\['[^'\\\]]*'\]|\[\"[^\"\\\]]*\"\])"
_REFERENCE = re.compile(rf"{_NAME}{_STEP}*")
_STEPS = re.compile(rf"\.(?P<attr>{_NAME})|\[(?P<index>-?\d+)\]|\[(?P<key>'[^'\\\]]*'|\"[^\"\\\]]*\")\]")
_ESCAPED = re.compile(r"\{\{(" + _REFERENCE.pattern + r")\}\}")
_PLACEHOLDER = re.compile(r"\{(" + _REFERENCE.pattern + r")\}")

_MISSING = object()


def resolve(reference: str, namespace: Mapping[str, Any]) -> Any:
    """The value ``reference`` names in ``namespace``, or ``_MISSING`` (never evaluates code)."""
    head = re.match(_NAME, reference)
    if head is None or head.group(0) not in namespace:
        return _MISSING
    value = namespace[head.group(0)]
    for step in _STEPS.finditer(reference, head.end()):
        try:
            if step.group("attr") is not None:
                value = getattr(value, step.group("attr"))
            elif step.group("index") is not None:
                value = value[int(step.group("index"))]
            else:
                value = value[ast.literal_eval(step.group("key"))]
        except (AttributeError, LookupError, TypeError):
            return _MISSING
    return value


def placeholders(text: str) -> list[str]:
    """The ``{reference}`` placeholders in ``text`` (escaped ``{{reference}}`` ones excluded)."""
    found: list[str] = []
    pos = 0
    while (start := text.find("{", pos)) >= 0:
        escaped = _ESCAPED.match(text, start)
        if escaped is not None:
            pos = escaped.end()
            continue
        placeholder = _PLACEHOLDER.match(text, start)
        if placeholder is not None:
            found.append(placeholder.group(1))
            pos = placeholder.end()
        else:
            pos = start + 1
    return found


def substitute(
    text: str,
    namespace: Mapping[str, Any],
    render: Callable[[Any], str] = str,
    used: list[str] | None = None,
) -> str:
    """Replace the ``{reference}`` placeholders that resolve in ``namespace`` by ``render(value)``; see the
    module doc. The references replaced are appended to ``used`` when given."""
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("{", pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        escaped = _ESCAPED.match(text, start)
        if escaped is not None:
            out.append("{" + escaped.group(1) + "}")
            pos = escaped.end()
            continue
        placeholder = _PLACEHOLDER.match(text, start)
        if placeholder is not None:
            value = resolve(placeholder.group(1), namespace)
            if value is not _MISSING:
                out.append(render(value))
                if used is not None:
                    used.append(placeholder.group(1))
                pos = placeholder.end()
                continue
        out.append("{")
        pos = start + 1
