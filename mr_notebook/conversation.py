"""A chat conversation as the notebook keeps it (``%%chat`` per model, the chat widget): what was said, and
what the model is sent of it.

One type for both, so the rules live once: a turn whose request failed is shown but never sent again, and an
answer goes back to the model without its reasoning (as llama.cpp's server and OpenAI's reasoning models
expect; thinking templates drop it from history anyway). Entries are plain JSON dicts, because the chat widget
syncs them to the browser as they are; each is replaced, never changed in place, so that a widget trait
holding a copy of the list sees the change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Roles of entries the model is sent; ``error`` entries (a failed request, shown inline) never are.
SENT_ROLES = ("user", "assistant", "system")


def reply_entry(text: str, *, reasoning: str = "", logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An assistant entry: the answer, its reasoning (shown collapsed) and its tokens (the token view)."""
    entry: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        entry["reasoning"] = reasoning
    if logprobs is not None:
        entry["logprobs"] = logprobs
    return entry


#: Tokens a token view keeps per reply: each is ~0.5 KB with its alternatives, and the chat widget syncs them
#: to the browser, so a reply of 100,000 tokens must not become 50 MB. The rest of the reply shows as text.
TOKEN_VIEW_LIMIT = 4000


def compact_logprobs(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI ``logprobs.content`` entries cut to what a token view shows (token, logprob, alternatives) for
    the first :data:`TOKEN_VIEW_LIMIT` tokens, without the byte lists that would triple what is synced."""
    out = []
    for entry in (entries or [])[:TOKEN_VIEW_LIMIT]:
        alternatives = [
            {"token": str(alt.get("token", "")), "logprob": alt.get("logprob")}
            for alt in entry.get("top_logprobs") or []
            if isinstance(alt, dict)
        ]
        out.append(
            {"token": str(entry.get("token", "")), "logprob": entry.get("logprob"), "top_logprobs": alternatives}
        )
    return out


@dataclass
class Conversation:
    """A system prompt and the entries of a chat, in order (``{"role", "content"}`` plus, for answers,
    ``reasoning`` and ``logprobs``; ``error`` entries are shown, never sent)."""

    system: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    def messages(
        self, user: str | None = None, *, history: bool = True, system: str | None = None
    ) -> list[dict[str, Any]]:
        """The OpenAI messages for the next request: the system prompt (``system`` overrides this
        conversation's), the earlier turns unless ``history`` is False, then ``user`` if given."""
        prompt = system if system is not None else self.system
        head = [{"role": "system", "content": prompt}] if prompt and prompt.strip() else []
        turns: list[dict[str, Any]] = []
        for entry in self.entries if history else ():
            role = entry.get("role")
            if role == "error":  # its request failed: the turn (and any partial reply) is not part of it
                if turns and turns[-1]["role"] == "assistant" and len(turns) >= 2 and turns[-2]["role"] == "user":
                    turns.pop()
                if turns and turns[-1]["role"] == "user":
                    turns.pop()
                continue
            if role in SENT_ROLES and isinstance(entry.get("content"), str):
                turns.append({"role": role, "content": entry["content"]})
        tail = [{"role": "user", "content": user}] if user is not None else []
        return [*head, *turns, *tail]

    def add(self, entry: dict[str, Any]) -> None:
        self.entries = [*self.entries, entry]

    def record(
        self, user: str, reply: str, *, reasoning: str = "", logprobs: list[dict[str, Any]] | None = None
    ) -> None:
        """A finished turn: the user's message and the answer."""
        self.entries = [
            *self.entries,
            {"role": "user", "content": user},
            reply_entry(reply, reasoning=reasoning, logprobs=logprobs),
        ]

    def set_last(self, entry: dict[str, Any]) -> None:
        """Replace the last entry (a reply that is still streaming)."""
        self.entries = [*self.entries[:-1], entry]

    def reset(self) -> None:
        self.system = None
        self.entries = []
