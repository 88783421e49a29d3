"""The llama.cpp side of a worker: one ``llama_cpp.Llama`` and what it serves.

Imported only inside a worker process (``python -m mr_notebook.engine.worker``); the host never imports
llama_cpp. Every method runs on the worker's scheduler thread, which owns the Llama objects, except
``tokenize``/``detokenize`` (vocabulary lookups, safe from the reader thread).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import llama_cpp
import numpy as np
import numpy.typing as npt
from llama_cpp import llama_chat_format, llama_grammar

from mr_notebook.engine.protocol import encode_delta
from mr_notebook.engine.stops import StopMatcher
from mr_notebook.errors import ContextLengthExceeded, InvalidRequest, ModelLoadError

log = logging.getLogger(__name__)

#: llama.cpp's server falls back to ChatML for models without a template; so do we.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
#: Embedding inputs are evaluated in one batch; this caps the second (embedding) context.
EMBED_CONTEXT = 2048

#: Deltas produced faster than this (seconds) are sent together: a tiny model makes thousands of tokens a
#: second, and one message per token would cost the host more than generating them. Real models on CPU take
#: longer than this per token, so each token still goes out at once; the first one always does.
COALESCE = 0.002

Send = Callable[[dict[str, Any] | bytes], None]


class _Watch:
    """Called by llama-cpp-python once per sampled token: counts them and stops on cancel."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel
        self.longest = 0

    def __call__(self, input_ids: npt.NDArray[np.intc], logits: npt.NDArray[np.single]) -> bool:
        # While generating, input_ids holds the prompt plus every token sampled before this one.
        self.longest = max(self.longest, len(input_ids))
        return self.cancel.is_set()


def _logprob_entries(data: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """llama-cpp-python's completion logprobs → OpenAI chat ``logprobs.content`` entries."""
    if not data:
        return None
    entries = []
    for token, logprob, top in zip(data["tokens"], data["token_logprobs"], data["top_logprobs"], strict=False):
        entries.append(
            {
                "token": token,
                "logprob": logprob,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in (top or {}).items()
                ],
            }
        )
    return entries


class LlamaBackend:
    """Loads a model from the config the host sent and serves generation and embeddings."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.path = str(config["path"])
        gpu_layers = config.get("gpu_layers")
        if gpu_layers is None:
            gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        self.gpu_layers = int(gpu_layers)
        self.threads = config.get("threads")
        kwargs: dict[str, Any] = {"n_ctx": int(config["n_ctx"]), "n_gpu_layers": self.gpu_layers}
        if self.threads:
            kwargs.update(n_threads=int(self.threads), n_threads_batch=int(self.threads))
        self.llama = self._load(**kwargs)
        self._embedder: llama_cpp.Llama | None = None
        self._scores_for_all = False
        template = config.get("chat_template") or self.llama.metadata.get("tokenizer.chat_template")
        model = self.llama._model
        eos, bos = self.llama.token_eos(), self.llama.token_bos()
        self.formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template or FALLBACK_TEMPLATE,
            eos_token=model.token_get_text(eos) if eos != -1 else "",
            bos_token=model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

    def _load(self, **kwargs: Any) -> llama_cpp.Llama:
        try:
            return llama_cpp.Llama(model_path=self.path, verbose=False, **kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {self.config.get('name', 'the model')} from {self.path}: {exc}. "
                "The file may be damaged or use an architecture this llama.cpp does not support; remove the "
                "model and pull (or package) it again."
            ) from exc

    @property
    def n_ctx(self) -> int:
        return int(self.llama.n_ctx())

    # ------------------------------------------------------------------ vocabulary (any thread)

    def tokenize(self, text: str) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return bytes(self.llama.detokenize(list(tokens))).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ generation (scheduler thread)

    def _chat_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
        try:
            result = self.formatter(messages=cast(Any, messages))
        except Exception as exc:  # a template's raise_exception() or a Jinja error in a user template
            raise InvalidRequest(f"The model's chat template refused these messages: {exc}", "messages") from exc
        tokens = self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        stops = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        return list(tokens), [s for s in stops if s]

    def _grammar(self, response_format: dict[str, Any] | None) -> llama_grammar.LlamaGrammar | None:
        if response_format is None:
            return None
        schema = response_format.get("schema")
        if response_format.get("type") == "json_schema":
            schema = response_format.get("json_schema", {}).get("schema")
        try:
            if schema:
                return llama_grammar.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            return llama_grammar.LlamaGrammar.from_string(llama_grammar.JSON_GBNF, verbose=False)
        except Exception as exc:  # the converter raises assorted errors for schemas it cannot express
            raise InvalidRequest(f"Cannot turn this JSON schema into a grammar: {exc}", "response_format") from exc

    def _logits_for_all(self, on: bool) -> None:
        """logprobs need every position's logits; keep that off otherwise (it costs n_ctx × n_vocab floats)."""
        llama = self.llama
        if on and not self._scores_for_all:
            # Zeroed pages are only committed as rows get written.
            llama.scores = np.zeros((llama._n_ctx, llama._n_vocab), dtype=np.single)
            self._scores_for_all = True
        llama._logits_all = on

    def generate(self, op: str, request: dict[str, Any], cancel: threading.Event, send: Send) -> None:
        """Stream one chat or text completion as ``delta`` messages, then ``done``."""
        rid, params = request["id"], request["params"]
        if op == "chat":
            prompt, extra_stops = self._chat_prompt(request["messages"])
            param = "messages"
        else:
            prompt = list(self.llama.tokenize(request["prompt"].encode("utf-8"), add_bos=True, special=True))
            extra_stops, param = [], "prompt"
        n_ctx = self.n_ctx
        if len(prompt) >= n_ctx:
            raise ContextLengthExceeded(
                f"The prompt is {len(prompt)} tokens but this model's context holds {n_ctx} (and needs room "
                "for the answer). Shorten the prompt or conversation, or raise the model's context size "
                "(`mr-notebook configure MODEL --context-size N`).",
                param,
            )
        grammar = self._grammar(params.get("response_format"))
        logprobs = (params.get("top_logprobs") or 0) if params.get("logprobs") else None
        watch = _Watch(cancel)
        # Stop strings are matched here rather than in llama-cpp-python so that usage stays exact.
        matcher = StopMatcher(list(params.get("stop") or []) + extra_stops)
        self._logits_for_all(logprobs is not None)
        stream = cast(
            Iterator[dict[str, Any]],
            self.llama.create_completion(
                prompt=prompt,
                max_tokens=params.get("max_tokens"),
                temperature=params["temperature"],
                top_p=params["top_p"],
                top_k=params["top_k"],
                min_p=params["min_p"],
                repeat_penalty=params["repeat_penalty"],
                presence_penalty=params["presence_penalty"],
                frequency_penalty=params["frequency_penalty"],
                seed=params.get("seed"),
                stream=True,
                logprobs=logprobs,
                grammar=grammar,
                stopping_criteria=llama_cpp.StoppingCriteriaList([watch]),
            ),
        )
        finish: str | None = None
        stop_hit = False
        held = ""  # text not sent yet: deltas closer than COALESCE apart go out as one message
        sent_at = 0.0
        try:
            for chunk in stream:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                text, stop_hit = matcher.feed(choice["text"])
                entries = _logprob_entries(choice.get("logprobs"))
                if entries:
                    send({"id": rid, "type": "delta", "text": held + text, "logprobs": entries})
                    held = ""
                elif text:
                    held += text
                    now = time.perf_counter()
                    if now - sent_at >= COALESCE:  # always true for the first token
                        send(encode_delta(rid, held))
                        held, sent_at = "", now
                if stop_hit:
                    finish = "stop"
                    break
                finish = choice.get("finish_reason") or finish
            else:
                held += matcher.flush()
        finally:
            stream.close()  # type: ignore[attr-defined]  # a generator
            self._logits_for_all(False)
        if held and finish != "cancelled":
            send(encode_delta(rid, held))
        sampled = watch.longest - len(prompt) + 1 if watch.longest else 0
        # An end-of-generation token is sampled but is not part of the answer.
        completion = sampled - 1 if finish == "stop" and not stop_hit and sampled > 0 else sampled
        send(
            {
                "id": rid,
                "type": "done",
                "finish_reason": finish or "stop",
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": completion},
            }
        )

    # ------------------------------------------------------------------ embeddings (scheduler thread)

    def _embedding_model(self) -> llama_cpp.Llama:
        if self._embedder is None:
            n_ctx = min(int(self.config.get("context_length") or EMBED_CONTEXT), EMBED_CONTEXT)
            # A GGUF that declares pooling (an embedding model) keeps it; chat models get mean pooling.
            pooling = (
                llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
                if self.config.get("pooling") is not None
                else llama_cpp.LLAMA_POOLING_TYPE_MEAN
            )
            kwargs: dict[str, Any] = {
                "n_ctx": n_ctx,
                "n_batch": n_ctx,
                "n_ubatch": n_ctx,
                "n_gpu_layers": self.gpu_layers,
                "embedding": True,
                "pooling_type": pooling,
            }
            if self.threads:
                kwargs.update(n_threads=int(self.threads), n_threads_batch=int(self.threads))
            self._embedder = self._load(**kwargs)
        return self._embedder

    def embed(self, request: dict[str, Any], send: Send) -> None:
        model = self._embedding_model()
        inputs: list[str] = request["inputs"]
        limit = int(model.n_batch)
        total = 0
        for i, text in enumerate(inputs):
            count = len(model.tokenize(text.encode("utf-8")))
            if count > limit:
                raise ContextLengthExceeded(
                    f"input[{i}] is {count} tokens but embeddings take at most {limit}; split the text.", "input"
                )
            total += count
        vectors = model.embed(inputs, normalize=True, truncate=False)
        send({"id": request["id"], "type": "result", "vectors": vectors, "prompt_tokens": total})
