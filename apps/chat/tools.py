"""Function calling on the web side (docs/api.md, "Tool calling"): the request's tools as the engine takes
them, the history rule for tool messages, the JSON schema that forces a call, and the answer's calls.

The prompt and the parsing happen in the worker (workers/tool_prompt.py, workers/tool_calls.py).
"""
from __future__ import annotations

from apps.core.errors import AppError

MAX_TOOLS = 128  # as OpenAI
MAX_TOOL_SCHEMA_CHARS = 65_536  # one function's parameters schema, as JSON text
MAX_TOOL_CALLS_PER_MESSAGE = 128
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


def forced_name(tool_choice) -> str | None:
    """"required", the named function, or None: the same reading as the worker's (workers/tool_prompt.py)."""
    if tool_choice == "required":
        return "required"
    if isinstance(tool_choice, dict):
        return tool_choice["function"]["name"]
    return None


def _parameters(function: dict) -> dict:
    """A function's arguments schema for a forced call. Its arguments are the parameters it declares: a
    schema that does not say whether other keys may appear gets additionalProperties false (as OpenAI's
    strict mode requires), or a small model may go on adding keys until max_tokens cuts the object."""
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    if "properties" in schema and "additionalProperties" not in schema:
        schema = {**schema, "additionalProperties": False}
    return schema


def forced_call_schema(functions: list[dict], tool_choice, parallel: bool) -> dict | None:
    """What a forced answer must be (the engine's constraint), or None when the model may answer freely.

    A named function: its arguments object, under its parameters schema. `required`: one
    {"name", "arguments"} object for any offered function, or a non-empty array of them when parallel calls
    are allowed. workers/tool_calls.py reads exactly these shapes.
    """
    forced = forced_name(tool_choice)
    if forced is None:
        return None
    if forced != "required":
        return next(_parameters(f) for f in functions if f["name"] == forced)
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": _parameters(f)},
              "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    call = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": call, "minItems": 1} if parallel else call


def tool_params(data: dict) -> dict:
    """The request's tool settings as `params` carries them to the engine; {} without tools."""
    tools = data.get("tools") or []
    if not tools:
        return {}
    functions = [tool["function"] for tool in tools]
    tool_choice = data.get("tool_choice") or "auto"
    parallel = data.get("parallel_tool_calls")
    parallel = True if parallel is None else parallel
    params = {"tools": functions, "tool_choice": tool_choice, "parallel_tool_calls": parallel}
    schema = forced_call_schema(functions, tool_choice, parallel)
    if schema is not None:
        # Enforced by the engine's constrained decoding (workers/constraints.py), so a forced call always parses.
        params["constraint"] = {"type": "json_schema", "schema": schema}
    return params


def tool_messages_check(messages: list[dict], *, first_new: int) -> None:
    """Each tool message answers a call made by an earlier assistant message (400 otherwise).

    `messages` is the history followed by the request's messages, which start at `first_new`; the param
    named in an error is the request's own index.
    """
    called: set[str] = set()
    for position, message in enumerate(messages):
        for call in message.get("tool_calls") or []:
            called.add(call["id"])
        if message["role"] == "tool" and message.get("tool_call_id") not in called:
            index = position - first_new
            raise AppError(f"messages.{index}: a tool message must answer a tool call of an earlier assistant "
                           f"message; no call has the id '{message.get('tool_call_id')}'.",
                           param=f"messages.{index}.tool_call_id", code="invalid_value")


def stored_message(role: str, content: str, tool_calls=None, tool_call_id: str = "", parts=None) -> dict:
    """A message as the prompt and the Message row hold it: tool keys only where they mean something, so a
    plain conversation reads (and caches, and reuses its prompt prefix) exactly as before tools existed.
    `parts`: the content parts in order when the message holds images or video (apps/vision/services.py);
    `content` stays its text alone, for everything that reads text."""
    message = {"role": role, "content": content}
    if parts:
        message["parts"] = parts
    if tool_calls:
        message["tool_calls"] = tool_calls
    if tool_call_id:
        message["tool_call_id"] = tool_call_id
    return message


def tool_call_deltas(event: dict) -> list[dict]:
    """A `tool_call` event as OpenAI streams a call: the first delta names it (arguments ""), the next ones
    carry fragments of its arguments."""
    deltas = []
    if event.get("id"):
        deltas.append({"index": event["tool_index"], "id": event["id"], "type": "function",
                       "function": {"name": event.get("name", ""), "arguments": ""}})
    if event.get("arguments"):
        deltas.append({"index": event["tool_index"], "function": {"arguments": event["arguments"]}})
    return [{"tool_calls": [delta]} for delta in deltas]
