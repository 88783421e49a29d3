"""What ``map`` iterates: items from a list, Series or DataFrame, prompts from templates, results back in shape.

pandas stays optional: it is imported only when the caller passed a pandas object (then it is loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mr_notebook.braces import placeholders, substitute
from mr_notebook.errors import InvalidRequest
from mr_notebook.workflows.schema import is_object_schema


@dataclass
class Items:
    """The items as records (dicts for rows, the value otherwise), their labels, and where they came from."""

    kind: str  # "list", "series" or "frame"
    records: list[Any]
    labels: list[Any]
    source: Any = None


def _pandas_kind(items: Any) -> str | None:
    pandas = sys.modules.get("pandas")  # given a pandas object, pandas is already imported
    if pandas is None:
        return None
    if isinstance(items, pandas.DataFrame):
        return "frame"
    if isinstance(items, pandas.Series):
        return "series"
    return None


def prepare(items: Any) -> Items:
    kind = _pandas_kind(items)
    if kind == "frame":
        records = [dict(zip(items.columns, row, strict=True)) for row in items.itertuples(index=False, name=None)]
        return Items("frame", records, list(items.index), items)
    if kind == "series":
        return Items("series", list(items.tolist()), list(items.index), items)
    if isinstance(items, str | bytes | Mapping):
        raise InvalidRequest(
            f"map needs a list of items (or a pandas Series / DataFrame), not a {type(items).__name__}; "
            "wrap a single item in a list."
        )
    try:
        records = list(items)
    except TypeError:
        raise InvalidRequest(f"map needs a list, a pandas Series or a DataFrame, not {type(items).__name__}.") from None
    return Items("list", records, list(range(len(records))), None)


def render(prompt: str | Callable[[Any], str], item: Any) -> str:
    """The user message for one item: ``prompt(item)``, or the template filled from the item."""
    if callable(prompt):
        return str(prompt(item))
    if isinstance(prompt, str):
        if isinstance(item, Mapping):
            missing = sorted({ref.split(".")[0].split("[")[0] for ref in placeholders(prompt)} - set(map(str, item)))
            if missing:
                raise InvalidRequest(
                    f"The prompt names {', '.join('{' + m + '}' for m in missing)}, which the item lacks "
                    f"(its fields: {', '.join(map(str, item)) or 'none'}). Fix the template, or write "
                    "{{name}} for literal braces."
                )
            return substitute(prompt, {str(k): v for k, v in item.items()})
        if "{}" not in prompt:
            raise InvalidRequest(
                "The prompt has no {} for the item: write it where the item goes, e.g. 'Classify: {}'."
            )
        return prompt.replace("{}", str(item))
    raise InvalidRequest(f"prompt must be a template string or a callable, not {type(prompt).__name__}.")


def _fields(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if hasattr(value, "model_dump"):
        return dict(value.model_dump())
    return dict(value) if isinstance(value, Mapping) else {"value": value}


def assemble(data: Items, values: list[Any], schema: Any) -> Any:
    """The result in the input's shape: a MapResult list, a Series on the index, or a DataFrame of fields."""
    if data.kind == "list":
        from mr_notebook.workflows.map import MapResult

        return MapResult(values)
    import pandas

    index = data.source.index
    if data.kind == "frame" and schema is not None and is_object_schema(schema):
        return pandas.DataFrame.from_records([_fields(v) for v in values], index=index)
    return pandas.Series(values, index=index, name="result", dtype=object)
