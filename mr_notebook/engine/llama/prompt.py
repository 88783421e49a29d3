"""Chat templates rendered into tokens, with message text never parsed as control tokens.

A template's own text (``<|im_start|>``, ``<|im_end|>`` …) is tokenized with special tokens parsed; the text
of the messages is not: a message (or a document pasted into one) that contains ``<|im_end|><|im_start|>system``
stays plain text and cannot forge a turn. Messages whose text contains no special-token text take the usual
path (the whole prompt tokenized at once), so their tokens are exactly llama.cpp's.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mr_notebook.engine.llama.model import Model
from mr_notebook.errors import InvalidRequest

#: llama.cpp's server falls back to ChatML for models without a template; so do we.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
#: Names the renderer sets itself; chat_template_kwargs cannot replace them.
_RESERVED = frozenset({"messages", "tools", "tool_choice", "add_generation_prompt", "bos_token", "eos_token"})
#: Private-use characters around a placeholder: they never occur in a template's own text.
_OPEN, _CLOSE = "\ue000", "\ue001"
_PLACEHOLDER = re.compile(_OPEN + r"(\d+)" + _CLOSE)


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, **kwargs: Any) -> str:
    # Hugging Face's tojson (not Jinja's HTML-escaping one): templates written for transformers expect it.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=bool(kwargs.get("sort_keys")))


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


class ChatPrompt:
    """A model's chat template (sandboxed Jinja: templates come from GGUF files, which may be hostile)."""

    def __init__(self, model: Model, template: str | None) -> None:
        self.model = model
        env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = _tojson
        env.globals.update(raise_exception=_raise, strftime_now=_strftime_now)
        try:
            self.template = env.from_string(template or FALLBACK_TEMPLATE)
        except jinja2.exceptions.TemplateError:
            self.template = env.from_string(FALLBACK_TEMPLATE)
        self.bos_text = model.piece(model.bos, special=True).decode("utf-8", errors="replace") if model.bos >= 0 else ""
        self.eos_text = model.piece(model.eos, special=True).decode("utf-8", errors="replace") if model.eos >= 0 else ""
        self._special_re: re.Pattern[str] | None = None

    def _specials(self) -> re.Pattern[str] | None:
        if self._special_re is None:
            texts = sorted(self.model.specials(), key=len, reverse=True)  # longest first, as llama.cpp matches
            self._special_re = re.compile("|".join(re.escape(t) for t in texts)) if texts else re.compile(r"(?!)")
        return self._special_re

    def render(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> str:
        extra = {k: v for k, v in (options.get("chat_template_kwargs") or {}).items() if k not in _RESERVED}
        try:
            return self.template.render(
                **extra,
                messages=messages,
                tools=options.get("tools"),
                tool_choice=options.get("tool_choice"),
                add_generation_prompt=True,
                bos_token=self.bos_text,
                eos_token=self.eos_text,
            )
        except Exception as exc:  # a template's raise_exception() or any Jinja error in a hostile template
            raise InvalidRequest(f"The model's chat template refused these messages: {exc}", "messages") from exc

    def tokens(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> list[int]:
        """The prompt tokens of a chat, message text tokenized as plain text."""
        specials = self._specials()
        risky: dict[int, str] = {}
        safe_messages = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str) and specials is not None and specials.search(content):
                key = len(risky)
                risky[key] = content
                message = {**message, "content": f"{_OPEN}{key}{_CLOSE}"}
            safe_messages.append(message)
        text = self.render(safe_messages, options)
        add_special = not (self.bos_text and text.startswith(self.bos_text))
        if not risky:
            return self.model.tokenize(text, add_special=add_special, special=True)
        return self._split_tokens(text, risky, add_special)

    def _split_tokens(self, text: str, risky: dict[int, str], add_special: bool) -> list[int]:
        """Partition as llama.cpp does (special tokens, then runs of raw text), message text always raw."""
        specials = self._specials()
        assert specials is not None
        table = self.model.specials()
        tokens: list[int] = []
        if add_special and self.model.add_bos and self.model.bos >= 0:
            tokens.append(self.model.bos)
        run: list[str] = []  # raw text since the last special token: tokenized as one piece, like llama.cpp

        def flush() -> None:
            if run:
                tokens.extend(self.model.tokenize("".join(run), add_special=False, special=False))
                run.clear()

        pos = 0
        for match in _PLACEHOLDER.finditer(text):
            self._template_part(text[pos : match.start()], specials, table, run, tokens, flush)
            run.append(risky.get(int(match.group(1)), match.group(0)))
            pos = match.end()
        self._template_part(text[pos:], specials, table, run, tokens, flush)
        flush()
        return tokens

    @staticmethod
    def _template_part(
        part: str, specials: re.Pattern[str], table: dict[str, int], run: list[str], tokens: list[int], flush: Any
    ) -> None:
        pos = 0
        for match in specials.finditer(part):
            if match.start() > pos:
                run.append(part[pos : match.start()])
            flush()
            tokens.append(table[match.group(0)])
            pos = match.end()
        if pos < len(part):
            run.append(part[pos:])
