"""JSON from untrusted clients and files, parsed within bounds.

Python's json module recurses once per nesting level: a body of 100,000 `[`
would raise RecursionError deep inside a view (a 500). The C parser checks the
recursion limit itself and fails fast, in time linear in the input, so we let
it parse (callers bound the size first), turn RecursionError into a clear
error, and then measure the depth of what it built without recursing.
A regular-expression pre-scan was tried and rejected: skipping string literals
with a regex goes quadratic on an unterminated string full of escaped quotes.
"""
from __future__ import annotations

import json
from typing import Any


class JsonInputError(ValueError):
    """The input is not JSON, or is JSON nested deeper than allowed."""


def nesting_depth(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_bounded(raw: bytes | str, *, max_depth: int, strict: bool = False) -> Any:
    """json.loads that refuses input nested deeper than `max_depth` with JsonInputError, never RecursionError.

    `strict` also refuses NaN and Infinity, which Python's json accepts but JSON (RFC 8259) does not
    (DRF's JSON parser refuses them too: a NaN temperature passes every range check).
    """
    try:
        value = json.loads(raw, parse_constant=_refuse_constant if strict else None)
    except RecursionError:
        raise JsonInputError(f"JSON nested too deeply; at most {max_depth} levels are accepted") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise JsonInputError(f"not valid JSON: {exc}") from exc
    depth = nesting_depth(value)
    if depth > max_depth:
        raise JsonInputError(f"JSON nested {depth} levels deep; at most {max_depth} levels are accepted")
    return value
