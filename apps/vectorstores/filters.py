"""OpenAI's attribute filters: checked, then compiled to SQL over the chunks' `attributes` (jsonb).

    {"type": "eq" | "ne" | "gt" | "gte" | "lt" | "lte", "key": "...", "value": string | number | boolean}
    {"type": "in" | "nin", "key": "...", "value": [string | number, ...]}
    {"type": "and" | "or", "filters": [<filter>, ...]}

Semantics (docs/vector_stores.md): `eq` matches the same JSON value (the string "5" is not the number
5); `ne` matches a different value or a missing key; `gt`/`gte`/`lt`/`lte` compare numbers with numbers
and strings with strings (a chunk whose value has the other type, or none, does not match); `in`/`nin`
test membership. Keys and values always travel as query parameters, never inside the SQL text.
"""
from __future__ import annotations

import json

from apps.core.errors import AppError

COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")
MEMBERSHIP = ("in", "nin")
COMPOUND = ("and", "or")
MAX_DEPTH, MAX_CONDITIONS, MAX_LIST = 8, 64, 100
_SQL_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


def _bad(param: str, message: str, code: str = "invalid_value") -> AppError:
    return AppError(f"{param}: {message}", param=param, code=code)


def _scalar(value) -> bool:
    """A value an attribute can hold: a string of at most 512 characters, a finite number, a boolean."""
    if isinstance(value, str):
        return len(value) <= 512
    return isinstance(value, bool) or (isinstance(value, (int, float)) and value == value
                                       and abs(value) != float("inf"))


def filters_check(value, param: str = "filters") -> dict:
    """`value` if it is a valid filter, else a 400 naming the part that is not (e.g. `filters.filters.1.type`)."""
    count = [0]

    def check(node, path: str, depth: int) -> None:
        if not isinstance(node, dict):
            raise _bad(path, "must be an object: a comparison {type, key, value} or a compound {type, filters}.")
        kind = node.get("type")
        count[0] += 1
        if depth > MAX_DEPTH or count[0] > MAX_CONDITIONS:
            raise _bad(path, f"filters nest at most {MAX_DEPTH} deep and hold at most {MAX_CONDITIONS} conditions.")
        if kind in COMPOUND:
            _only(node, ("type", "filters"), path)
            children = node.get("filters")
            if not isinstance(children, list) or not children:
                raise _bad(f"{path}.filters", "must be a non-empty list of filters.")
            for index, child in enumerate(children):
                check(child, f"{path}.filters.{index}", depth + 1)
            return
        if kind not in COMPARISONS + MEMBERSHIP:
            raise _bad(f"{path}.type", f"must be one of {', '.join(COMPARISONS + MEMBERSHIP + COMPOUND)}.")
        _only(node, ("type", "key", "value"), path)
        key = node.get("key")
        if not isinstance(key, str) or not key or len(key) > 64:
            raise _bad(f"{path}.key", "must be an attribute name (a string of 1 to 64 characters).")
        if "value" not in node:
            raise _bad(f"{path}.value", "is required.")
        item = node["value"]
        if kind in MEMBERSHIP:
            if not isinstance(item, list) or not item or len(item) > MAX_LIST or not all(map(_scalar, item)):
                raise _bad(f"{path}.value", f"must be a list of 1 to {MAX_LIST} strings (512 characters at most), "
                                            "numbers or booleans.")
        elif not _scalar(item):
            raise _bad(f"{path}.value", "must be a string (512 characters at most), a number or a boolean.")
        elif kind in _SQL_OPERATORS and isinstance(item, bool):
            raise _bad(f"{path}.value", f"'{kind}' compares numbers or strings, not booleans.")

    check(value, param, 1)
    return value


def _only(node: dict, allowed: tuple, path: str) -> None:
    for key in node:
        if key not in allowed:
            raise AppError(f"{path}.{key}: unknown parameter in a filter (it takes {', '.join(allowed)}).",
                           param=f"{path}.{key}", code="unsupported_parameter")


def filters_sql(node: dict, column: str = "c.attributes") -> tuple[str, list]:
    """A checked filter as a SQL condition over `column` and its parameters."""
    kind = node["type"]
    if kind in COMPOUND:
        parts = [filters_sql(child, column) for child in node["filters"]]
        joiner = " AND " if kind == "and" else " OR "
        return "(" + joiner.join(sql for sql, _ in parts) + ")", [p for _, params in parts for p in params]
    key, value = node["key"], node["value"]
    if kind == "eq":
        return f"({column} -> %s) = %s::jsonb", [key, json.dumps(value)]
    if kind == "ne":
        return f"({column} -> %s) IS DISTINCT FROM %s::jsonb", [key, json.dumps(value)]
    if kind in MEMBERSHIP:
        inside = f"(({column} -> %s) <@ %s::jsonb AND jsonb_typeof({column} -> %s) <> 'array')"
        sql = inside if kind == "in" else f"NOT COALESCE({inside}, false)"
        return sql, [key, json.dumps(value), key]
    operator = _SQL_OPERATORS[kind]
    if isinstance(value, str):
        return (f"(jsonb_typeof({column} -> %s) = 'string' AND ({column} ->> %s) {operator} %s)",
                [key, key, value])
    # CASE keeps the cast from ever seeing a non-number (PostgreSQL may evaluate AND's sides in any order).
    return (f"(CASE WHEN jsonb_typeof({column} -> %s) = 'number' THEN ({column} ->> %s)::numeric END) "
            f"{operator} %s::numeric", [key, key, value])
