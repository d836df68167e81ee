"""The prompt of a request with tools, or with tool calls and tool results in its history (docs/api.md).

A template that knows tools (apps/catalog/tool_support.py says `native`) renders them itself:
`apply_chat_template(messages, tools=...)`, with earlier calls and results in the shape transformers'
templates expect (arguments as objects). Any other template gets the generic tool prompt: a system section
that lists the tools as JSON schemas and the `<tool_call>` format, and earlier calls and results written
out as text in that same format (calls in the assistant's message, results as a user message of
`<tool_response>` blocks), because such templates have no tool roles.

`tool_choice` adds one sentence to the system message ("call X now", "do not call a function"); a forced
call's JSON itself is held to its schema by the constraint (apps/chat/tools.py::forced_call_schema).
"""
from __future__ import annotations

import json

from apps.catalog.tool_support import GENERIC, tool_support
from apps.chat.tools import forced_name

GENERIC_TOOLS_SECTION = """# Tools

You may call one or more functions to help with the user's request. The functions are described here as \
JSON schemas:
<tools>
{tools}
</tools>

To call a function, reply with a JSON object holding its name and arguments between <tool_call></tool_call> \
tags, one call per pair of tags:
<tool_call>
{{"name": "<function name>", "arguments": {{"<parameter>": <value>}}}}
</tool_call>
Then stop: the results come back in the next message, each between <tool_response></tool_response> tags."""


def choice_note(tools: list[dict], tool_choice, parallel: bool) -> str:
    forced = forced_name(tool_choice)
    if tool_choice == "none" or not tools:
        return "Answer in plain text; do not call any function."
    if forced == "required":
        if parallel:
            return ('You must call at least one function now. Reply with only a JSON array of calls, each '
                    '{"name": "<function name>", "arguments": {...}}, and nothing else.')
        return ('You must call exactly one function now. Reply with only one JSON object '
                '{"name": "<function name>", "arguments": {...}} and nothing else.')
    if forced:
        return (f"You must call the function {forced} now. Reply with only its arguments as one JSON object "
                "that matches its parameters schema, and nothing else.")
    return "" if parallel else "Call at most one function at a time."


def prompt_ids(tokenizer, messages: list[dict], *, tools: list[dict], tool_choice, parallel: bool) -> list[int]:
    """The prompt's token ids for these messages and tools (`tools` empty: a plain request)."""
    has_tool_history = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not tools and not has_tool_history:
        return _render(tokenizer, messages)
    native = tool_support(tokenizer.chat_template)["tool_calling"] != GENERIC
    offered = tools if tool_choice != "none" else []
    note = choice_note(tools, tool_choice, parallel) if tools else ""
    if native:
        rendered = _with_system(_native_messages(messages), note)
        return _render(tokenizer, rendered, tools=[{"type": "function", "function": t} for t in offered] or None)
    section = GENERIC_TOOLS_SECTION.format(tools="\n".join(
        json.dumps({"type": "function", "function": t}, ensure_ascii=False) for t in offered)) if offered else ""
    return _render(tokenizer, _with_system(_generic_messages(messages), "\n\n".join(p for p in (section, note) if p)))


def _render(tokenizer, messages: list[dict], tools=None) -> list[int]:
    options = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                         **options)["input_ids"]


def _with_system(messages: list[dict], text: str) -> list[dict]:
    if not text:
        return messages
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def _arguments_object(arguments):
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return arguments  # stored as the client sent it; the text is the most faithful rendering
    return value if isinstance(value, dict) else arguments


def _call_names(messages: list[dict]) -> dict[str, str]:
    return {call.get("id"): call["function"]["name"] for m in messages for call in m.get("tool_calls") or []}


def _native_messages(messages: list[dict]) -> list[dict]:
    names, out = _call_names(messages), []
    for m in messages:
        message = {"role": m["role"], "content": m.get("content") or ""}
        if m.get("tool_calls"):
            message["tool_calls"] = [
                {"id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"],
                              "arguments": _arguments_object(call["function"]["arguments"])}}
                for call in m["tool_calls"]]
        if m["role"] == "tool":
            message.update(tool_call_id=m.get("tool_call_id", ""), name=names.get(m.get("tool_call_id"), ""))
        out.append(message)
    return out


def _generic_messages(messages: list[dict]) -> list[dict]:
    names, out = _call_names(messages), []
    for m in messages:
        if m["role"] == "tool":
            block = "<tool_response>\n" + json.dumps(
                {"name": names.get(m.get("tool_call_id"), ""), "content": m.get("content") or ""},
                ensure_ascii=False) + "\n</tool_response>"
            if out and out[-1].get("_tool_results"):  # the results of one turn's calls go back together
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
            continue
        content = m.get("content") or ""
        if m.get("tool_calls"):
            calls = "\n".join("<tool_call>\n" + json.dumps(
                {"name": call["function"]["name"], "arguments": _arguments_object(call["function"]["arguments"])},
                ensure_ascii=False) + "\n</tool_call>" for call in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": m["role"], "content": content})
    return [{key: value for key, value in m.items() if key != "_tool_results"} for m in out]
