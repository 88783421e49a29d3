"""What the extension keeps per IPython shell: the engine connection, the default model, conversations."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mr_notebook.client import Engine


@dataclass
class Conversation:
    """One model's chat history in this kernel (``%%chat``)."""

    system: str | None = None
    turns: list[dict[str, Any]] = field(default_factory=list)

    def messages(self, user: str, *, history: bool = True, system: str | None = None) -> list[dict[str, Any]]:
        """The message list to send for a new user turn."""
        prompt = system if system is not None else self.system
        head = [{"role": "system", "content": prompt}] if prompt else []
        return [*head, *(self.turns if history else []), {"role": "user", "content": user}]

    def record(self, user: str, reply: str) -> None:
        self.turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]

    def reset(self) -> None:
        self.system = None
        self.turns = []


class KernelState:
    """Created by ``%load_ext mr_notebook``; the engine connects on first use, not at load."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        #: The model ``%%chat`` uses without ``-m``: the last one ``%model run`` loaded.
        self.default_model: str | None = None
        self.conversations: dict[str, Conversation] = {}
        #: Stored models this kernel used (name → digest), for ``%model lock``.
        self.used_models: dict[str, str] = {}

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from mr_notebook.client import connect

                self._engine = connect()
            return self._engine

    @property
    def connected(self) -> bool:
        return self._engine is not None

    def use(self, engine: Engine) -> None:
        """Swap the engine (tests, or a user who wants another server); closes the previous one."""
        with self._lock:
            old, self._engine = self._engine, engine
        if old is not None and old is not engine:
            old.close()

    def conversation(self, model: str) -> Conversation:
        return self.conversations.setdefault(model, Conversation())

    def close(self) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
