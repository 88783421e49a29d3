"""A reply schema (JSON schema dict, pydantic model class or TypedDict) → ``response_format`` and a parser."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from mr_notebook.errors import MrNotebookError, ReplyNotJSON

#: Turns the reply text into the value the caller gets (dict, list, pydantic instance …); raises ReplyNotJSON.
Parser = Callable[[str], Any]


def _is_typeddict(value: Any) -> bool:
    from typing import is_typeddict

    try:
        return bool(is_typeddict(value))
    except TypeError:
        return False


def response_format(schema: Any) -> tuple[dict[str, Any], Parser]:
    """``(response_format, parse)`` for ``schema``; the engine turns the schema into a grammar."""
    parse: Parser
    if isinstance(schema, type) and hasattr(schema, "model_json_schema") and hasattr(schema, "model_validate_json"):
        model_class: Any = schema  # a pydantic model: replies become instances
        document = model_class.model_json_schema()
        parse = _guarded(model_class.model_validate_json)
    elif _is_typeddict(schema):
        try:
            import pydantic  # noqa: F401
        except ImportError:
            raise MrNotebookError(
                "A TypedDict schema needs pydantic to become a JSON schema: `pip install pydantic`, "
                "or pass the JSON schema as a dict."
            ) from None
        model = _typeddict_model(schema)
        document = model.model_json_schema()
        validate = model.model_validate_json
        parse = _guarded(lambda text: validate(text).model_dump(exclude_unset=True))
    elif isinstance(schema, dict):
        document = schema
        parse = _guarded(json.loads)
    else:
        raise TypeError(
            f"schema must be a JSON schema (dict), a pydantic model class or a TypedDict, not {type(schema).__name__}."
        )
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(document.get("title") or "reply"))[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": document, "strict": True}}, parse


def _typeddict_model(typed: Any) -> Any:
    """A pydantic model with the TypedDict's fields (pydantic takes typing.TypedDict only from Python 3.12)."""
    from typing import get_type_hints

    import pydantic

    required: frozenset[str] = getattr(typed, "__required_keys__", frozenset())
    fields: dict[str, Any] = {
        name: (hint, ... if name in required else None) for name, hint in get_type_hints(typed).items()
    }
    return pydantic.create_model(typed.__name__, **fields)


def json_object() -> tuple[dict[str, Any], Parser]:
    """``--json``: any JSON object."""
    return {"type": "json_object"}, _guarded(json.loads)


def is_object_schema(schema: Any) -> bool:
    """Whether replies are objects with fields (a DataFrame of fields makes sense)."""
    if isinstance(schema, dict):
        return schema.get("type") == "object" or "properties" in schema
    return isinstance(schema, type) and (hasattr(schema, "model_json_schema") or _is_typeddict(schema))


def _guarded(load: Callable[[str], Any]) -> Parser:
    def parse(text: str) -> Any:
        try:
            return load(text)
        except ValueError as exc:  # json.JSONDecodeError and pydantic.ValidationError are ValueErrors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ReplyNotJSON(
                f"The reply is not valid JSON for the schema ({first}). Try a larger max_tokens, or a model "
                "that follows JSON instructions better."
            ) from None

    return parse
