"""Request bodies as strict JSON: what json.loads lets through and a server must not.

``json.loads`` accepts ``NaN``/``Infinity``, turns ``1e999`` into infinity, answers a 5,000-digit integer
with a ValueError and 100,000 brackets with a RecursionError; nesting a few hundred levels deep parses but
fails later (``json.dumps`` to the worker, Jinja) as a 500. Each of these is a 400 here, in OpenAI's shape.
"""

from __future__ import annotations

import json
import math
from itertools import chain, compress, repeat
from operator import is_
from typing import Any

from mr_notebook.errors import InvalidJSON, UnsupportedMediaType

#: Integers longer than this are refused: no field of the API needs more than 64 bits, and Python refuses to
#: parse over 4,300 digits with a ValueError that is no JSON error.
MAX_INT_DIGITS = 20
#: Deepest nesting of objects and arrays a body may have. Real requests (tool schemas, JSON schemas) stay far
#: below; deeper ones would hit Python's recursion limit later (json.dumps to the worker, Jinja) as a 500.
MAX_JSON_DEPTH = 64
_INT_LIMIT = 10**MAX_INT_DIGITS
_CONTAINERS = frozenset({list, dict})
_is_container = _CONTAINERS.__contains__


def _no_constant(name: str) -> Any:
    raise InvalidJSON(f"{name} is not valid JSON; send finite numbers.")


def _check_shape(data: Any) -> None:
    """InvalidJSON for nesting deeper than MAX_JSON_DEPTH, over-long integers, infinite floats.

    Level by level with map/compress/chain, so the loops run in C: a Python walk over a parsed 16 MiB body (or
    parse_int/parse_float hooks, called per number) costs seconds of the event loop.
    """
    level: list[Any] = [data]
    for depth in range(MAX_JSON_DEPTH + 1):
        types = list(map(type, level))
        ints = list(compress(level, map(is_, types, repeat(int))))
        if ints and (max(ints) >= _INT_LIMIT or min(ints) <= -_INT_LIMIT):
            digits = max(len(str(abs(v))) for v in ints if abs(v) >= _INT_LIMIT)
            raise InvalidJSON(f"The body has an integer of {digits} digits; the limit is {MAX_INT_DIGITS}.")
        if not all(map(math.isfinite, compress(level, map(is_, types, repeat(float))))):
            raise InvalidJSON("The body has a number out of range (e.g. 1e999); send finite numbers.")
        lists = compress(level, map(is_, types, repeat(list)))
        dicts = compress(level, map(is_, types, repeat(dict)))
        level = list(chain(chain.from_iterable(lists), chain.from_iterable(map(dict.values, dicts))))
        if not level:
            return
        if depth == MAX_JSON_DEPTH - 1 and any(map(_is_container, map(type, level))):
            break
    raise InvalidJSON(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep; flatten it.")


def parse_json(raw: bytes | bytearray) -> Any:
    """Strict JSON: no NaN/Infinity, no over-long integers, bounded nesting; else InvalidJSON (400)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJSON("The request body is not UTF-8 text; send a JSON object.") from None
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except InvalidJSON:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidJSON(
            f"The request body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})."
        ) from None
    except RecursionError:
        raise InvalidJSON(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep; flatten it.") from None
    except ValueError:  # Python refuses integers over 4,300 digits
        raise InvalidJSON(f"The body has an integer of over 4300 digits; the limit is {MAX_INT_DIGITS}.") from None
    _check_shape(data)
    return data


def require_json_content_type(content_type: str) -> None:
    """UnsupportedMediaType unless ``application/json`` (or ``application/…+json``; parameters such as charset ok)."""
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    got = f"it was {content_type[:100]!r}" if content_type else "none was sent"
    raise UnsupportedMediaType(
        f"Send the body as JSON with the header `Content-Type: application/json` ({got}; "
        "with curl: -H 'Content-Type: application/json')."
    )
