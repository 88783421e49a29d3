"""Ollama's Go chat templates, translated to the Jinja that llama.cpp's chat formatting takes, when they can be.

Two shapes cover most of Ollama's library:

* **legacy**: the template renders one turn from ``.System``, ``.Prompt`` and ``.Response``; Ollama runs it
  once per user turn of the conversation and, for the last turn, cuts the template after ``.Response`` so the
  model continues from there (``template.Execute`` in Ollama's ``template/template.go``). The translation is a
  Jinja macro for one turn and a loop that gathers turns the same way.
* **messages**: the template loops itself with ``range .Messages`` over ``.Role`` / ``.Content``, and reads the
  joined system prompts as ``.System`` / ``$.System``.

Supported actions: text, ``{{ .Field }}``, ``if`` / ``else if`` / ``else`` / ``end``, ``range .Messages``, the
conditions ``eq`` ``ne`` ``not`` ``and`` ``or`` on fields and string literals, ``{{-`` / ``-}}`` trimming and
comments. Anything else (variables, ``len``, ``slice``, tools, ``json``) returns None: the caller then keeps
the chat template inside the GGUF file, which llama.cpp uses by default. Hand-written because no library
translates Go's text/template to Jinja; the result is checked by rendering it with jinja2's sandbox.
"""

from __future__ import annotations

import re
import shlex

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_FIELD = re.compile(r"^(\$)?\.([A-Za-z_]\w*)$")


class _Unsupported(Exception):
    pass


def translate(template: str) -> str | None:
    """The Jinja equivalent of an Ollama Go template, or None when it uses what is not supported."""
    try:
        messages_mode = bool(re.search(r"\{\{-?\s*range\s+\.Messages\s*-?\}\}", template))
        body = _Translator(messages_mode).run(template)
    except _Unsupported:
        return None
    if messages_mode:
        jinja = (
            "{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') "
            "| join('\\n\\n') +%}" + body + "{{ '' }}"  # keeps a final newline (Jinja drops one by default)
        )
    else:
        jinja = _legacy(body)
    return jinja if _renders(jinja) else None


def _legacy(body: str) -> str:
    flush = (
        "{{- turn(ns.system, ns.prompt, ns.response, false) -}}"
        "{%- set ns.system = '' -%}{%- set ns.prompt = '' -%}{%- set ns.response = '' -%}"
    )
    return (
        "{%- macro turn(System, Prompt, Response, last) +%}" + body + "{%+ endmacro -%}"
        "{%- set ns = namespace(system='', prompt='', response='') -%}"
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' -%}"
        "{%- if ns.prompt or ns.response -%}" + flush + "{%- endif -%}"
        "{%- set ns.system = message.content -%}"
        "{%- elif message.role == 'user' -%}"
        "{%- if ns.response -%}" + flush + "{%- endif -%}"
        "{%- set ns.prompt = message.content -%}"
        "{%- elif message.role == 'assistant' -%}{%- set ns.response = message.content -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{{- turn(ns.system, ns.prompt, ns.response, true) -}}"
    )


class _Translator:
    def __init__(self, messages_mode: bool) -> None:
        self.messages_mode = messages_mode
        self.blocks: list[str] = []  # "if" | "range"
        self.cut = False  # legacy: .Response was met at the top level; the rest is for earlier turns only

    def run(self, template: str) -> str:
        out: list[str] = []
        position = 0
        for match in _ACTION.finditer(template):
            out.append(_text(template[position : match.start()]))
            position = match.end()
            # "+" keeps whitespace around block tags whatever trim_blocks/lstrip_blocks the renderer uses (the
            # engine renders with both on; Go has neither): only Go's own "-" trims.
            left = "-" if match.group(1) else "+"
            right = "-" if match.group(3) else "+"
            out.append(self._action(match.group(2).strip(), left, right))
        out.append(_text(template[position:]))
        if self.blocks:
            raise _Unsupported("unclosed block")
        if self.cut:
            out.append("{%+ endif +%}")
        return "".join(out)

    def _action(self, action: str, left: str, right: str) -> str:
        if action.startswith("/*") and action.endswith("*/"):  # a comment: only its trimming remains
            return f"{{{{{left.strip('+')} '' {right.strip('+')}}}}}"
        words = _words(action)
        head = words[0]
        if head == "if":
            self.blocks.append("if")
            return f"{{%{left} if {self._condition(words[1:])} {right}%}}"
        if head == "else" and len(words) > 2 and words[1] == "if":
            self._expect("if")
            return f"{{%{left} elif {self._condition(words[2:])} {right}%}}"
        if head == "else" and len(words) == 1:
            self._expect("if")
            return f"{{%{left} else {right}%}}"
        if head == "end" and len(words) == 1:
            kind = self.blocks.pop() if self.blocks else "?"
            if kind == "?":
                raise _Unsupported("end without a block")
            return f"{{%{left} end{'for' if kind == 'range' else 'if'} {right}%}}"
        if head == "range" and words[1:] == [".Messages"] and self.messages_mode and "range" not in self.blocks:
            self.blocks.append("range")
            return f"{{%{left} for message in messages {right}%}}"
        if len(words) == 1 and _FIELD.match(head):
            value = self._value(head)
            if value == "Response" and not self.messages_mode:
                if self.blocks:
                    raise _Unsupported(".Response inside a block")
                self.cut = True
                return f"{{{{{left.strip('+')} Response {right.strip('+')}}}}}{{%+ if not last +%}}"
            return f"{{{{{left.strip('+')} {value} {right.strip('+')}}}}}"
        raise _Unsupported(action)

    def _expect(self, kind: str) -> None:
        if not self.blocks or self.blocks[-1] != kind:
            raise _Unsupported("else outside if")

    def _condition(self, words: list[str]) -> str:
        if not words:
            raise _Unsupported("empty condition")
        head, args = words[0], words[1:]
        if head in ("eq", "ne") and len(args) == 2:
            return f"{self._operand(args[0])} {'==' if head == 'eq' else '!='} {self._operand(args[1])}"
        if head == "not" and len(args) == 1:
            return f"not {self._operand(args[0])}"
        if head in ("and", "or") and len(args) >= 2:
            return f" {head} ".join(f"({self._operand(a)})" for a in args)
        if not args:
            return self._operand(head)
        raise _Unsupported(" ".join(words))

    def _operand(self, word: str) -> str:
        if len(word) >= 2 and word[0] == word[-1] == '"':
            return repr(word[1:-1])
        return self._value(word)

    def _value(self, word: str) -> str:
        match = _FIELD.match(word)
        if match is None:
            raise _Unsupported(word)
        rooted, field = match.group(1), match.group(2)
        in_range = "range" in self.blocks
        if in_range and not rooted and field in ("Role", "Content"):
            return f"message.{field.lower()}"
        if (rooted or not in_range) and self.messages_mode and field == "System":
            return "system"
        if not self.messages_mode and not in_range and field in ("System", "Prompt", "Response"):
            return field
        raise _Unsupported(word)


def _words(action: str) -> list[str]:
    if "(" in action or "|" in action or ":=" in action or "$" in action.replace("$.", ""):
        raise _Unsupported(action)
    try:
        return shlex.split(action, posix=False)
    except ValueError as exc:
        raise _Unsupported(action) from exc


def _text(text: str) -> str:
    """Template text as Jinja text: Jinja's own delimiters in it are emitted as strings."""
    if not any(mark in text for mark in ("{{", "{%", "{#", "}}", "%}", "#}")):
        return text
    return f"{{{{ {text!r} }}}}"


def _renders(jinja: str) -> bool:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    sample = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    rendered = set()
    try:
        for trim in (False, True):  # Jinja's defaults, and llama.cpp's (and our engine's) settings
            environment = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
            rendered.add(environment.from_string(jinja).render(messages=sample, add_generation_prompt=True))
    except TemplateError:
        return False
    return len(rendered) == 1 and all("U1" in text and "U2" in text for text in rendered)
