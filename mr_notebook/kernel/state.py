"""What the extension keeps per IPython shell: the engine connection, the default model, conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mr_notebook.conversation import Conversation

if TYPE_CHECKING:
    from mr_notebook.client import Engine


class KernelState:
    """Created by ``%load_ext mr_notebook``; the engine connects on first use, not at load."""

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}

    @property
    def default_model(self) -> str | None:
        """The model ``%%chat`` uses without ``-m`` (the process's, :data:`mr_notebook.current.usage`)."""
        from mr_notebook import current

        return current.usage.default_model

    @default_model.setter
    def default_model(self, name: str | None) -> None:
        from mr_notebook import current

        current.usage.default_model = name

    @property
    def used_models(self) -> dict[str, str]:
        """Stored models this kernel used (name → digest), for ``%model lock``."""
        from mr_notebook import current

        return current.usage.used_models

    @property
    def engine(self) -> Engine:
        """The engine of this process (:mod:`mr_notebook.current`), shared with the widgets and helpers."""
        from mr_notebook import current

        return current.engine()

    @property
    def connected(self) -> bool:
        from mr_notebook import current

        return current.peek() is not None

    def use(self, engine: Engine) -> None:
        """Swap the engine (tests, or a user who wants another server); closes the previous one."""
        from mr_notebook import current

        current.use(engine)

    def conversation(self, model: str) -> Conversation:
        return self.conversations.setdefault(model, Conversation())

    def close(self) -> None:
        from mr_notebook import current

        current.close()
