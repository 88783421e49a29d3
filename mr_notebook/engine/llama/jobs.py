"""What the scheduler holds per request and per sequence slot."""

from __future__ import annotations

import codecs
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mr_notebook.engine.llama.model import Model
from mr_notebook.engine.llama.prompt import ChatPrompt
from mr_notebook.engine.llama.sampling import Sampler, check_grammar
from mr_notebook.engine.stops import StopMatcher
from mr_notebook.errors import ContextLengthExceeded, InvalidRequest


@dataclass
class Slot:
    """One sequence id of the shared context; ``cache`` is exactly what its KV cells hold, by position."""

    seq: int
    cache: list[int] = field(default_factory=list)
    choice: Choice | None = None
    last_used: float = 0.0


@dataclass
class Choice:
    """One of a request's ``n`` answers, generated in its own slot."""

    index: int
    slot: Slot
    sampler: Sampler
    matcher: StopMatcher
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))
    #: The token sampled last, fed to the next decode step (None while the prompt is prefilled).
    pending: int | None = None
    generated: int = 0
    held: str = ""
    sent_at: float = 0.0
    finish: str | None = None
    #: True when a stop string ended it (the text after it is never shown).
    hit: bool = False


@dataclass
class Job:
    """One chat or completion request: its prompt, options and choices."""

    rid: Any
    prompt: list[int]
    params: dict[str, Any]
    grammar: str | None
    stops: list[str]
    cancel: threading.Event
    n: int = 1
    top_logprobs: int | None = None
    max_tokens: int | None = None
    choices: list[Choice] = field(default_factory=list)
    #: Prompt tokens already in the primary slot's cache (prefill progress).
    n_past: int = 0
    #: Prompt tokens found in the slot's cache (not evaluated again).
    cached: int = 0
    admitted_at: float = field(default_factory=time.monotonic)
    completion_tokens: int = 0

    @property
    def prefilling(self) -> bool:
        return bool(self.choices) and self.choices[0].pending is None and self.choices[0].finish is None

    @property
    def done(self) -> bool:
        return bool(self.choices) and all(c.finish is not None for c in self.choices)


@dataclass
class EmbedJob:
    """One embeddings request; inputs are evaluated several per decode until all are done."""

    rid: Any
    inputs: list[list[int]]
    cancel: threading.Event
    next: int = 0
    prompt_tokens: int = 0


def new_job(
    request: dict[str, Any], cancel: threading.Event, model: Model, chat: ChatPrompt, *, n_ctx: int, parallel: int
) -> Job:
    """A request checked and tokenized: every mistake in it is an error here, before it takes a slot."""
    params = request["params"]
    if request["op"] == "chat":
        prompt = chat.tokens(request["messages"], params)
        param = "messages"
    elif isinstance(request["prompt"], list):
        prompt = list(request["prompt"])
        model.check_tokens(prompt, "prompt")
        param = "prompt"
    else:
        prompt = model.tokenize(request["prompt"], add_special=True, special=True)
        param = "prompt"
    if not prompt:
        raise InvalidRequest("The prompt is empty; send some text.", param)
    if len(prompt) >= n_ctx:
        raise ContextLengthExceeded(
            f"The prompt is {len(prompt)} tokens but this model's context holds {n_ctx} (and needs room "
            "for the answer). Shorten the prompt or conversation, or raise the model's context size "
            "(`mr-notebook configure MODEL --context-size N`).",
            param,
        )
    n = int(params.get("n") or 1)
    if n > parallel:
        raise InvalidRequest(
            f"n is {n} but this model runs at most {parallel} sequences at once; ask for fewer choices "
            "or raise its parallel setting (`mr-notebook configure MODEL --parallel N`).",
            "n",
        )
    grammar = check_grammar(model, params.get("response_format"))
    top = (params.get("top_logprobs") or 0) if params.get("logprobs") else None
    return Job(
        rid=request["id"],
        prompt=prompt,
        params=params,
        grammar=grammar,
        stops=list(params.get("stop") or []),
        cancel=cancel,
        n=n,
        top_logprobs=top,
        max_tokens=params.get("max_tokens"),
    )
