"""One GGUF model loaded with llama.cpp: weights, vocabulary, and what llama.cpp last complained about."""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import llama_cpp

from mr_notebook.errors import InvalidRequest, ModelLoadError

log = logging.getLogger(__name__)

#: llama.cpp's error and warning lines (numbered), most recent last: a refused grammar is only explained there.
_recent: deque[tuple[int, str]] = deque(maxlen=20)
_count = itertools.count()
_LOG_ERROR, _LOG_WARN, _LOG_CONT = 3, 2, 5
_last_level = 0


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != _LOG_CONT:
        _last_level = level
    if _last_level in (_LOG_ERROR, _LOG_WARN):
        line = text.decode("utf-8", errors="replace").strip()
        if line:
            _recent.append((next(_count), line))
            log.debug("llama.cpp: %s", line)


def install_log_capture() -> None:
    """Route llama.cpp's log here (replacing llama-cpp-python's callback, which prints to stderr)."""
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


@contextmanager
def stderr_captured() -> Iterator[list[str]]:
    """What C code prints to fd 2 meanwhile (llama.cpp's grammar parser explains refusals only there)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(8192).decode("utf-8", errors="replace").splitlines())


def mark_log() -> int:
    """A position in the captured log; :func:`log_since` returns what llama.cpp said after it."""
    return _recent[-1][0] + 1 if _recent else 0


def log_since(mark: int) -> str:
    return " ".join(line for n, line in list(_recent) if n >= mark)


def utf8(text: str, param: str | None = None) -> bytes:
    """``text`` as UTF-8; a lone UTF-16 surrogate (valid in JSON, not in Unicode) is a 400, not a crash."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise InvalidRequest(
            f"The request holds {bad}, half of a UTF-16 surrogate pair, which is not valid Unicode text; "
            "send the whole character (or valid UTF-8).",
            param,
        ) from None


class Model:
    """The llama_model and its vocabulary; vocabulary lookups are safe from any thread."""

    def __init__(self, path: str, gpu_layers: int, name: str) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        self.path, self.name = path, name
        mark = mark_log()
        model = llama_cpp.llama_model_load_from_file(path.encode("utf-8"), params)
        if not model:
            detail = log_since(mark) or "no reason given"
            raise ModelLoadError(
                f"llama.cpp could not load {name} from {path}: {detail}. The file may be damaged or use an "
                "architecture this llama.cpp does not support; remove the model and pull (or package) it again."
            )
        self.model = model
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(llama_cpp.llama_model_n_embd(model))
        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(model))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
        # Recurrent and sliding-window models cannot drop the tail of a cached sequence.
        self.partial_reuse = not (
            llama_cpp.llama_model_is_recurrent(model)
            or llama_cpp.llama_model_is_hybrid(model)
            or llama_cpp.llama_model_n_swa(model) > 0
        )
        self._specials: dict[str, int] | None = None

    def free(self) -> None:
        llama_cpp.llama_model_free(self.model)

    # ------------------------------------------------------------------ metadata

    def meta(self, key: str) -> str | None:
        size = llama_cpp.llama_model_meta_val_str(self.model, key.encode("utf-8"), None, 0)  # type: ignore[arg-type]
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self.model, key.encode("utf-8"), buf, size + 1)  # type: ignore[arg-type]
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    # ------------------------------------------------------------------ vocabulary

    def tokenize(self, text: str, *, add_special: bool, special: bool) -> list[int]:
        data = utf8(text)
        size = len(data) + 2
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, special)
        if n < 0:  # the buffer was too small (cannot happen with one token per byte + 2, but be safe)
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, special)
        return list(buf[:n])

    def check_tokens(self, tokens: Sequence[int], param: str) -> None:
        """Token ids outside the vocabulary make llama.cpp abort the process; refuse them first."""
        for t in tokens:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.n_vocab:
                raise InvalidRequest(
                    f"{param} holds token id {t!r}, but this model's vocabulary has ids 0 to {self.n_vocab - 1}. "
                    "Send token ids made by this model's tokenizer, or send text.",
                    param,
                )

    def piece(self, token: int, *, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        self.check_tokens(tokens, "tokens")
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def specials(self) -> dict[str, int]:
        """Text of every token that tokenizing with ``special=True`` turns into one control token."""
        if self._specials is None:
            wanted = (
                llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
                | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
            )
            found: dict[str, int] = {}
            for token in range(self.n_vocab):
                if llama_cpp.llama_vocab_get_attr(self.vocab, token) & wanted:
                    text = self.piece(token, special=True).decode("utf-8", errors="replace")
                    if text:
                        found.setdefault(text, token)
            self._specials = found
        return self._specials

    def describe(self) -> dict[str, Any]:
        return {"n_vocab": self.n_vocab, "n_embd": self.n_embd}
