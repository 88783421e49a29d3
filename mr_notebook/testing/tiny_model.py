"""Builder of tiny, deterministic llama-architecture GGUF models for tests.

The model produced by :func:`build_tiny_model` is a real GGUF file that
llama.cpp (and therefore llama-cpp-python / Docker Model Runner) loads and runs
like any other llama model, but its weights are wired by hand so that:

* any chat prompt, and any completion prompt whose last token is not one of
  the reply tokens, produces exactly ``reply`` followed by end-of-generation,
  at any temperature / top-p / top-k / min-p / seed and with the usual
  repeat, presence and frequency penalties;
* with ``never_stop=True`` the reply repeats forever (for length/cancel tests);
* with ``pooling`` set, it works as an embedding model whose vectors differ
  between texts;
* with ``mixing=True`` the weights are random instead (attention and
  feed-forward included), so each next token depends on the whole context:
  greedy output is some deterministic text that changes with the prompt (for
  tests that batching does not change results).

How it works: the attention output and feed-forward down projections are zero,
so the final hidden state equals the token embedding and the next token depends
only on the current token.  The reply is split into ``k`` unique vocabulary
pieces.  Non-reply tokens have a 1 in embedding dimension 0, reply piece ``i``
has a 1 in dimension ``i`` (dimensions above ``k`` carry small seeded
token-specific noise); the output matrix maps dimension 0 to the first piece,
dimension ``i`` to piece ``i + 1`` and dimension ``k`` to end-of-generation,
with a logit gap of several hundred.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

from mr_notebook.testing.gguf_files import write_gguf

__all__ = [
    "CHATML_TEMPLATE",
    "DEFAULT_REPLY",
    "EMBEDDING_LENGTH",
    "MAX_REPLY_PIECES",
    "POOLING_TYPES",
    "TinyModelFactory",
    "build_tiny_model",
    "reply_pieces",
]

DEFAULT_REPLY = "Hello from the tiny model!"

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'"
    " + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

EMBEDDING_LENGTH = 64
BLOCK_COUNT = 2
HEAD_COUNT = 4
FEED_FORWARD_LENGTH = 128
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

#: Reply pieces use embedding dimensions 1..k, dimension 0 is "not a reply token".
MAX_REPLY_PIECES = EMBEDDING_LENGTH - 1

POOLING_TYPES: dict[str, gguf.PoolingType] = {
    "mean": gguf.PoolingType.MEAN,
    "cls": gguf.PoolingType.CLS,
    "last": gguf.PoolingType.LAST,
}

_SPACE = "\u2581"  # SentencePiece's "▁" word-boundary marker
_UNK, _BOS, _EOS = "<unk>", "<s>", "</s>"
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
# llama-cpp-python detokenizes each token into a 32-byte buffer.
_MAX_PIECE_BYTES = 32
_CHUNK_BYTES = 16
_NOISE_SCALE = 0.1
_LOGIT_WEIGHT = 20.0  # x ~8 after RMSNorm -> logits of about +/-150
_WORDS = (
    *("the", "a", "an", "and", "of", "to", "in", "is", "it", "you", "I", "what", "how", "why"),
    *("hello", "hi", "world", "model", "tiny", "test", "user", "system", "assistant"),
    *("say", "tell", "me", "please", "thanks", "yes", "no"),
)


def _piece_bytes(piece: str) -> int:
    return len(piece.replace(_SPACE, " ").encode("utf-8"))


def _chunks(piece: str) -> list[str]:
    """Split ``piece`` into chunks of at most ``_CHUNK_BYTES`` output bytes."""
    out: list[str] = []
    current = ""
    for char in piece:
        if current and _piece_bytes(current + char) > _CHUNK_BYTES:
            out.append(current)
            current = ""
        current += char
    if current:
        out.append(current)
    return out


def _reserved_tokens() -> list[str]:
    specials = [_UNK, _BOS, _EOS]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    return [*specials, *byte_tokens, _IM_START, _IM_END]


def reply_pieces(reply: str, controls: tuple[str, ...] = ()) -> list[str]:
    """Split ``reply`` into the unique vocabulary pieces the model emits.

    Pieces use SentencePiece's ``▁`` for spaces; the first piece keeps the
    reply's own leading whitespace (normally none).  A piece that would
    repeat an earlier one is merged with its successor (or predecessor).
    Each of ``controls`` in the reply is a piece of its own (a control token).
    """
    raw: list[str] = []
    parts = re.split("(" + "|".join(re.escape(c) for c in controls) + ")", reply) if controls else [reply]
    for part in parts:
        if part in controls:
            raw.append(part)
            continue
        words = [w.replace(" ", _SPACE) for w in re.findall(r"\s*\S+|\s+", part)]
        raw += [chunk for word in words for chunk in _chunks(word)]
    # A bare newline piece would swallow the "\n" ending every ChatML prompt.
    used = {*_reserved_tokens(), "\n"}
    pieces: list[str] = []
    pending = ""
    for chunk in raw:
        candidate = pending + chunk
        if candidate in used:
            pending = candidate
            continue
        pieces.append(candidate)
        used.add(candidate)
        pending = ""
    if pending:
        if not pieces:
            raise ValueError(f"reply {reply!r} collides with a special token")
        used.discard(pieces[-1])
        merged = pieces[-1] + pending
        if merged in used:
            raise ValueError(f"cannot split reply {reply!r} into unique tokens")
        pieces[-1] = merged
    for piece in pieces:
        if _piece_bytes(piece) > _MAX_PIECE_BYTES:
            raise ValueError(f"reply {reply!r} is too repetitive: piece {piece!r} exceeds {_MAX_PIECE_BYTES} bytes")
    if len(pieces) > MAX_REPLY_PIECES:
        raise ValueError(
            f"reply splits into {len(pieces)} tokens but the tiny model supports "
            f"at most {MAX_REPLY_PIECES}; use a shorter reply"
        )
    return pieces


def _base_normal_tokens() -> list[str]:
    """Printable characters plus common words and all their prefixes."""
    tokens: dict[str, None] = {_SPACE: None}
    for code in range(33, 127):
        tokens[chr(code)] = None
    for word in _WORDS:
        full = _SPACE + word
        for end in range(2, len(full) + 1):
            tokens[full[:end]] = None
    return list(tokens)


def _vocabulary(pieces: list[str], controls: tuple[str, ...] = ()) -> tuple[list[str], list[int], list[float]]:
    reserved = _reserved_tokens()
    piece_set = set(pieces)
    normal = [t for t in _base_normal_tokens() if t not in piece_set]
    tokens = [*reserved, *normal, *pieces]
    types: list[int] = []
    for token in reserved:
        if token == _UNK:
            types.append(gguf.TokenType.UNKNOWN)
        elif token.startswith("<0x"):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.CONTROL)
    types += [gguf.TokenType.NORMAL] * len(normal)
    # A control piece is detokenized as nothing unless special tokens are rendered (like <|python_tag|>).
    types += [gguf.TokenType.CONTROL if p in controls else gguf.TokenType.NORMAL for p in pieces]
    scores = [0.0] * len(reserved)
    scores += [-float(i) for i in range(len(normal) + len(pieces))]
    return tokens, types, scores


def _f16(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float16]:
    return np.ascontiguousarray(array, dtype=np.float16)


def _weights(
    tokens: list[str], pieces: list[str], never_stop: bool, seed: int
) -> dict[str, npt.NDArray[np.float16] | npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    n_vocab, n_embd, k = len(tokens), EMBEDDING_LENGTH, len(pieces)
    index = {token: i for i, token in enumerate(tokens)}
    piece_ids = [index[p] for p in pieces]

    embd = np.zeros((n_vocab, n_embd))
    embd[:, k + 1 :] = _NOISE_SCALE * rng.standard_normal((n_vocab, n_embd - k - 1))
    embd[:, 0] = 1.0
    for dim, token_id in enumerate(piece_ids, start=1):
        embd[token_id, 0] = 0.0
        embd[token_id, dim] = 1.0

    # Dimension d of the (normalized) hidden state votes +w for its successor
    # token and -w for every other token; noise dimensions do not vote.
    successors = [*piece_ids]
    successors.append(piece_ids[0] if never_stop else index[_IM_END])
    output = np.zeros((n_vocab, n_embd))
    output[:, : k + 1] = -_LOGIT_WEIGHT
    for dim, token_id in enumerate(successors):
        output[token_id, dim] = _LOGIT_WEIGHT

    ones = np.ones(n_embd, dtype=np.float32)
    tensors: dict[str, npt.NDArray[np.float16] | npt.NDArray[np.float32]] = {
        "token_embd.weight": _f16(embd),
        "output_norm.weight": ones,
        "output.weight": _f16(output),
    }
    for layer in range(BLOCK_COUNT):
        prefix = f"blk.{layer}."
        tensors[prefix + "attn_norm.weight"] = ones
        for name in ("attn_q", "attn_k", "attn_v"):
            tensors[prefix + name + ".weight"] = _f16(0.02 * rng.standard_normal((n_embd, n_embd)))
        tensors[prefix + "attn_output.weight"] = _f16(np.zeros((n_embd, n_embd)))
        tensors[prefix + "ffn_norm.weight"] = ones
        for name in ("ffn_gate", "ffn_up"):
            tensors[prefix + name + ".weight"] = _f16(0.02 * rng.standard_normal((FEED_FORWARD_LENGTH, n_embd)))
        tensors[prefix + "ffn_down.weight"] = _f16(np.zeros((n_embd, FEED_FORWARD_LENGTH)))
    return tensors


def _q8(array: npt.NDArray[np.float64]) -> tuple[Any, gguf.GGMLQuantizationType]:
    kind = gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), kind), kind


def _mixing_weights(n_vocab: int, seed: int) -> dict[str, Any]:
    """Random weights where attention matters, quantized like the models people run (Q8_0)."""
    rng = np.random.default_rng(seed)
    n_embd, ones = EMBEDDING_LENGTH, np.ones(EMBEDDING_LENGTH, dtype=np.float32)
    tensors: dict[str, Any] = {
        "token_embd.weight": _q8(rng.standard_normal((n_vocab, n_embd))),
        "output_norm.weight": ones,
        "output.weight": _q8(3.0 * rng.standard_normal((n_vocab, n_embd))),
    }
    for layer in range(BLOCK_COUNT):
        prefix = f"blk.{layer}."
        tensors[prefix + "attn_norm.weight"] = ones
        tensors[prefix + "ffn_norm.weight"] = ones
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensors[prefix + name + ".weight"] = _q8(0.3 * rng.standard_normal((n_embd, n_embd)))
        for name in ("ffn_gate", "ffn_up"):
            tensors[prefix + name + ".weight"] = _q8(0.2 * rng.standard_normal((FEED_FORWARD_LENGTH, n_embd)))
        tensors[prefix + "ffn_down.weight"] = _q8(0.2 * rng.standard_normal((n_embd, FEED_FORWARD_LENGTH)))
    return tensors


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    reply: str = DEFAULT_REPLY,
    never_stop: bool = False,
    pooling: str | None = None,
    seed: int = 0,
    name: str = "tiny",
    context_length: int = 512,
    chat_template: str | None = None,
    splits: int = 1,
    mixing: bool = False,
    controls: tuple[str, ...] = (),
) -> Path:
    """Write a tiny llama GGUF model to ``path`` (atomically) and return it.

    With ``splits > 1`` it writes a llama.cpp split model instead, as ``gguf-split`` would:
    ``{stem}-00001-of-0000N.gguf`` … beside ``path``, tensors spread over the files, metadata and
    tokenizer in the first; it returns the first file, which is what llama.cpp loads.

    The same arguments always produce byte-identical files. ``controls``: texts that are control tokens of
    the vocabulary (e.g. ``<|python_tag|>``), emitted as such where they occur in the reply.

    Raises:
        ValueError: if the reply cannot be represented (too many pieces, too
            repetitive, empty with ``never_stop``), ``pooling`` is unknown or
            ``splits`` is not between 1 and the number of tensors.
    """
    pieces = reply_pieces(reply, controls)
    if never_stop and not pieces:
        raise ValueError("never_stop=True needs a non-empty reply")
    if pooling is not None and pooling not in POOLING_TYPES:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {sorted(POOLING_TYPES)}")
    if context_length < 1:
        raise ValueError("context_length must be positive")
    tokens, types, scores = _vocabulary([*pieces, *(c for c in controls if c not in pieces)], controls)
    tensors: dict[str, Any] = (
        _mixing_weights(len(tokens), seed) if mixing else dict(_weights(tokens, pieces, never_stop, seed))
    )

    def populate(writer: gguf.GGUFWriter) -> None:
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_vocab_size(len(tokens))
        writer.add_context_length(context_length)
        writer.add_embedding_length(EMBEDDING_LENGTH)
        writer.add_block_count(BLOCK_COUNT)
        writer.add_feed_forward_length(FEED_FORWARD_LENGTH)
        writer.add_head_count(HEAD_COUNT)
        writer.add_head_count_kv(HEAD_COUNT)
        writer.add_layer_norm_rms_eps(RMS_EPS)
        writer.add_rope_dimension_count(EMBEDDING_LENGTH // HEAD_COUNT)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        if pooling is not None:
            writer.add_pooling_type(POOLING_TYPES[pooling])
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(tokens.index(_UNK))
        writer.add_bos_token_id(tokens.index(_BOS))
        writer.add_eos_token_id(tokens.index(_IM_END))
        writer.add_eot_token_id(tokens.index(_IM_END))
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)
        writer.add_chat_template(CHATML_TEMPLATE if chat_template is None else chat_template)

    return write_gguf(path, "llama", populate, tensors, splits=splits)[0]


class TinyModelFactory:
    """Builds tiny models on demand, caching one file per set of options."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._cache: dict[str, Path] = {}

    def __call__(
        self,
        *,
        reply: str = DEFAULT_REPLY,
        never_stop: bool = False,
        pooling: str | None = None,
        seed: int = 0,
        name: str = "tiny",
        context_length: int = 512,
        chat_template: str | None = None,
        splits: int = 1,
        mixing: bool = False,
        controls: tuple[str, ...] = (),
    ) -> Path:
        options = (reply, never_stop, pooling, seed, name, context_length, chat_template)
        # One-file models keep their old key, so their file names do not change.
        key = repr(options if splits == 1 else (*options, splits))
        key += ", mixing" if mixing else ""
        key += f", controls={controls!r}" if controls else ""
        cached = self._cache.get(key)
        if cached is not None and cached.exists():
            return cached
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        path = build_tiny_model(
            self.directory / f"tiny-{digest}.gguf",
            reply=reply,
            never_stop=never_stop,
            pooling=pooling,
            seed=seed,
            name=name,
            context_length=context_length,
            chat_template=chat_template,
            splits=splits,
            mixing=mixing,
            controls=controls,
        )
        self._cache[key] = path
        return path
