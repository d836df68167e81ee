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


class JsonTextError(JsonInputError):
    """Valid JSON holding a string the hub cannot store: `path` names it ("messages.0.content")."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


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


def unstorable_text(value: Any) -> tuple[str, str] | None:
    """The first string (key or value) PostgreSQL cannot store as text, as (path, why), or None.

    JSON may carry "\\u0000" (a NUL, which a PostgreSQL text or jsonb value cannot hold) and a lone
    "\\ud800" (half a surrogate pair, which is no Unicode character and cannot be encoded as UTF-8). Either
    would reach the database and fail there as a server error, whichever field it sits in; found here,
    it is the client's 400, naming the field. Walks without recursion, like nesting_depth.
    """
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                return path, problem
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                problem = _text_problem(key)
                if problem:  # named by the object that holds it: the key itself cannot be echoed back
                    return path, f"{problem} in object keys"
                children.append((child, f"{path}.{key}" if path else key))
            stack.extend(reversed(children))  # depth first, in document order
        elif isinstance(item, list):
            stack.extend(reversed([(child, f"{path}.{index}" if path else str(index))
                                   for index, child in enumerate(item)]))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "Null characters are not allowed"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "Unpaired surrogate characters are not allowed (the text is not valid Unicode)"
    return None


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def loads_bounded(raw: bytes | str, *, max_depth: int, strict: bool = False) -> Any:
    """json.loads that refuses input nested deeper than `max_depth` with JsonInputError, never RecursionError.

    `strict` (a client's request) also refuses NaN and Infinity, which Python's json accepts but JSON
    (RFC 8259) does not (DRF's JSON parser refuses them too: a NaN temperature passes every range check),
    and strings the database cannot store (JsonTextError, see unstorable_text).
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
    if strict:
        found = unstorable_text(value)
        if found:
            path, problem = found
            raise JsonTextError(f"{problem} (in '{path or 'the body'}').", path)
    return value
