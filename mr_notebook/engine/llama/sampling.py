"""One sampler chain per sequence, grammars checked before they reach llama.cpp, and logprobs."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import llama_grammar

from mr_notebook.engine.llama.model import Model, log_since, mark_log, stderr_captured, utf8
from mr_notebook.engine.llama.tool_grammar import TOOLS_ROOT, ToolGrammar, tool_grammar
from mr_notebook.errors import InvalidRequest

#: Tokens the repeat/presence/frequency penalties look back on (llama-cpp-python's default).
PENALTY_LAST_N = 64


def grammar_text(response_format: dict[str, Any] | None) -> str | None:
    """The GBNF grammar for a response_format (None: free text)."""
    if response_format is None:
        return None
    schema = response_format.get("schema")
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
    if not schema:
        return str(llama_grammar.JSON_GBNF)
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(
            f"Cannot turn this JSON schema into a grammar: {exc}. Simplify the schema.", "response_format"
        ) from exc


def init_grammar(model: Model, text: str, lazy: ToolGrammar | None = None) -> Any:
    """llama.cpp's grammar sampler, or InvalidRequest saying what llama.cpp refused (never a NULL sampler).

    ``lazy``: a tool-call grammar that waits for its family's opening marker (text or control token) and
    constrains only what follows (llama.cpp's lazy grammar, as its server does for ``tool_choice: auto``).
    """
    data = utf8(text, "tools" if lazy is not None else "response_format")
    mark = mark_log()
    with stderr_captured() as printed:
        if lazy is None:
            sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, data, b"root")
        else:
            patterns = (ctypes.c_char_p * len(lazy.patterns))(*(p.encode("utf-8") for p in lazy.patterns))
            tokens = (llama_cpp.llama_token * len(lazy.tokens))(*lazy.tokens)
            sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                model.vocab,
                data,
                TOOLS_ROOT.encode("utf-8"),
                patterns,
                len(lazy.patterns),
                tokens,
                len(lazy.tokens),
            )
    said = [line.strip() for line in printed if "error" in line.lower()]
    reason = " ".join(said)[:300] or log_since(mark)
    if not sampler:
        what = "the tools' parameter schemas" if lazy is not None else "this response_format"
        raise InvalidRequest(
            f"llama.cpp refused the grammar for {what}"
            + (f" ({reason})" if reason else "")
            + ". Simplify the schema (fewer or smaller length and item limits, simpler patterns).",
            "tools" if lazy is not None else "response_format",
        )
    return sampler


def check_grammar(model: Model, response_format: dict[str, Any] | None) -> str | None:
    """Build and free the grammar once, so a refused one is a 400 before any sequence starts."""
    text = grammar_text(response_format)
    if text is not None:
        llama_cpp.llama_sampler_free(init_grammar(model, text))
    return text


class Sampler:
    """A llama.cpp sampler chain for one sequence: bias, penalties, grammar, then the sampling steps."""

    def __init__(self, model: Model, params: dict[str, Any], grammar: str | None, seed_offset: int = 0) -> None:
        self.model = model
        spec = params.get("tool_grammar")
        self.tool_grammar = tool_grammar(model, spec) if isinstance(spec, dict) else None
        #: Control tokens shown as text in this sequence's output (tool-call markers while tools are offered).
        self.preserved = self.tool_grammar.preserved if self.tool_grammar is not None else frozenset()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        try:
            self._build(params, grammar, seed_offset)
        except BaseException:
            llama_cpp.llama_sampler_free(chain)
            raise

    def _add(self, sampler: Any) -> None:
        if not sampler:
            raise InvalidRequest("llama.cpp refused these sampling parameters; check their values.", None)
        llama_cpp.llama_sampler_chain_add(self.chain, sampler)

    def _build(self, params: dict[str, Any], grammar: str | None, seed_offset: int) -> None:
        n_vocab = self.model.n_vocab
        bias = params.get("logit_bias") or {}
        if bias:
            entries = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (token, value) in enumerate(bias.items()):
                self.model.check_tokens([int(token)], "logit_bias")
                entries[i].token = int(token)  # type: ignore[assignment]
                entries[i].bias = float(value)
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), entries))
        repeat, freq, present = params["repeat_penalty"], params["frequency_penalty"], params["presence_penalty"]
        if repeat != 1.0 or freq != 0.0 or present != 0.0:
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, repeat, freq, present))
        if grammar is not None:
            self._add(init_grammar(self.model, grammar))
        elif self.tool_grammar is not None and self.tool_grammar.text is not None:
            try:
                lazy = init_grammar(self.model, self.tool_grammar.text, self.tool_grammar)
            except InvalidRequest:
                lazy = None  # refused by llama.cpp: the answer stays free (see tool_grammar.tool_grammar)
            if lazy is not None:
                self._add(lazy)
        temperature = params["temperature"]
        if temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        seed = params.get("seed")
        seed = llama_cpp.LLAMA_DEFAULT_SEED if seed is None else (int(seed) + seed_offset) & 0xFFFFFFFF
        self._add(llama_cpp.llama_sampler_init_top_k(int(params["top_k"])))
        self._add(llama_cpp.llama_sampler_init_top_p(float(params["top_p"]), 1))
        self._add(llama_cpp.llama_sampler_init_min_p(float(params["min_p"]), 1))
        self._add(llama_cpp.llama_sampler_init_temp(float(temperature)))
        self._add(llama_cpp.llama_sampler_init_dist(seed))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch row ``index`` (llama.cpp also accepts the token into the chain)."""
        return int(llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.chain, token)

    def free(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None


def logits_row(ctx: Any, index: int, n_vocab: int) -> npt.NDArray[np.single]:
    pointer = llama_cpp.llama_get_logits_ith(ctx, index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))


def logprob_entry(model: Model, logits: npt.NDArray[np.single], token: int, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs.content`` entry for ``token``: log-softmax of the raw logits, as llama-cpp-python."""
    shifted = logits.astype(np.float64) - float(logits.max())
    logprobs = shifted - np.log(np.exp(shifted).sum())

    def describe(t: int) -> dict[str, Any]:
        data = model.piece(t)
        return {
            "token": data.decode("utf-8", errors="replace"),
            "logprob": float(logprobs[t]),
            "bytes": list(data),
        }

    entry = describe(token)
    if top:
        best = np.argpartition(-logprobs, min(top, len(logprobs) - 1))[:top]
        entry["top_logprobs"] = [describe(int(t)) for t in sorted(best, key=lambda t: -logprobs[t])]
    else:
        entry["top_logprobs"] = []
    return entry
