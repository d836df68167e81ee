"""Tool calls in a model's output: one incremental parser for the formats real models use (docs/api.md).

Formats (the catalog names a model's format; apps/catalog/tool_support.py):
- `hermes` (Hermes, Qwen 2/2.5/3) and `generic` (our documented prompt for templates without tools):
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, several in a row for parallel calls, text
  before them is content.
- `llama3`: the answer is `{"name": ..., "parameters": {...}}` (several separated by `;`), possibly after
  `<|python_tag|>`; only an answer that starts so is a call.
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`, or the newer
  `[TOOL_CALLS]name[ARGS]{...}`; the marker is a special token that decoding drops, so an answer that
  starts with a JSON array of calls is read the same way.
- forced (`tool_choice` required or a named function): the whole answer is the JSON the constraint
  allows (apps/chat/tools.py::forced_call_schema): for a named function its arguments object, for
  `required` one `{"name", "arguments"}` object, or an array of them when parallel calls are allowed.

Streaming: text outside calls goes out as content as soon as it cannot be the start of a call marker;
a call is held until its text is complete, then goes out whole (its id and name, then its arguments in
one fragment), so a call that turns out malformed can still fall back to content: nothing of a call
ever leaks as content, and no half call reaches a client. The parser never raises on model output.

One exception: a forced named function's answer that starts with `{` is its arguments object, generated
under the function's schema, so it streams as it comes (the call's id and name at once, then each piece
of the arguments up to the object's closing brace), as OpenAI streams arguments; only max_tokens can cut
it short, and then the call keeps the arguments written so far, with finish_reason "length", as OpenAI's.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

HERMES, GENERIC, LLAMA3, MISTRAL = "hermes", "generic", "llama3", "mistral"
FORMATS = (HERMES, GENERIC, LLAMA3, MISTRAL)
TAG_START, TAG_END = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_MARKER, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's shape)
    id: str = ""

    def __post_init__(self):
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Content:
    text: str


@dataclass
class CallOut:
    index: int  # the call's place among this answer's calls (OpenAI's tool_calls[].index)
    call: ToolCall
    fragment: str | None = None  # None: the whole call; else its first event (""), or a piece of its arguments


class ToolCallParser:
    """Feed it the answer's text as it comes; it returns Content and CallOut pieces in order.

    `forced` is None (the model may call tools or answer), "required", or the name of the function the
    request forces. `tool_names` are the functions the request offers: a call of any other is content.
    """

    def __init__(self, *, format: str = GENERIC, forced: str | None = None, tool_names=(), parallel: bool = True):
        self.format = format if format in FORMATS else GENERIC
        self.forced = forced
        self.tool_names = set(tool_names)
        self.parallel = parallel
        self.calls: list[ToolCall] = []
        self._content: list[str] = []
        self._buffer = ""
        self._in_call = False
        self._pending_space = ""  # trailing whitespace of content, sent only if more content follows
        self._whole_answer: bool | None = None  # JSON-first formats: is the answer a call (decided at its start)
        self._arguments_scan: _ObjectScan | None = None  # a forced named call's arguments, streaming

    @property
    def content(self) -> str | None:
        """The answer's text outside its calls; None when it has calls and nothing else (OpenAI's null)."""
        text = "".join(self._content)
        return None if self.calls and not text.strip() else text

    def feed(self, text: str) -> list:
        self._buffer += text
        if self.forced and self.forced != "required" and self._whole_answer is not False:
            return self._feed_forced_arguments()
        if self.forced:
            return []  # the whole answer is one JSON value: read at the end
        if self.format in (HERMES, GENERIC):
            return self._feed_tagged()
        return self._feed_json_first()

    def finish(self) -> list:
        out: list = []
        buffer, self._buffer = self._buffer, ""
        if self._arguments_scan is not None:
            pass  # streamed as it came: the call holds what was written
        elif self.forced:
            calls = _forced_calls(buffer, self.forced)
            out += self._calls_or_content(calls, buffer)
        elif self.format in (HERMES, GENERIC):
            if self._in_call:  # the answer ended inside a call (end of turn or max_tokens before the end tag)
                out += self._calls_or_content(_tagged_call(buffer), TAG_START + buffer)
            else:
                out += self._emit_content(buffer)
        elif self._whole_answer:
            calls = _llama3_calls(buffer) if self.format == LLAMA3 else _mistral_calls(buffer)
            out += self._calls_or_content(calls, buffer)
        else:
            out += self._emit_content(buffer)
        if not self.calls and self._pending_space:  # an answer without calls keeps its text exactly
            self._content.append(self._pending_space)
            out.append(Content(self._pending_space))
        self._pending_space = ""
        return out

    # -- formats ---------------------------------------------------------------

    def _feed_tagged(self) -> list:
        out: list = []
        while True:
            if not self._in_call:
                start = self._buffer.find(TAG_START)
                if start < 0:
                    hold = _partial_suffix(self._buffer, TAG_START)
                    out += self._emit_content(self._buffer[:len(self._buffer) - hold])
                    self._buffer = self._buffer[len(self._buffer) - hold:]
                    return out
                out += self._emit_content(self._buffer[:start])
                self._buffer, self._in_call = self._buffer[start + len(TAG_START):], True
            end = self._buffer.find(TAG_END)
            if end < 0:
                return out
            raw, self._buffer, self._in_call = self._buffer[:end], self._buffer[end + len(TAG_END):], False
            out += self._calls_or_content(_tagged_call(raw), TAG_START + raw + TAG_END)

    def _feed_forced_arguments(self) -> list:
        if self._arguments_scan is None:
            start = self._buffer.lstrip()
            if not start:
                return []
            if not start.startswith("{"):
                self._whole_answer = False  # not what the constraint writes: read whole at the end
                return []
            self._arguments_scan, self._buffer = _ObjectScan(), start
            call = ToolCall(self.forced, "")
            self.calls.append(call)
            out = [CallOut(0, call, "")]
        else:
            out = []
        piece, self._buffer = self._arguments_scan.take(self._buffer), ""
        if piece:
            self.calls[0].arguments += piece
            out.append(CallOut(0, self.calls[0], piece))
        return out

    def _feed_json_first(self) -> list:
        if self._whole_answer is None:
            start = self._buffer.lstrip()
            if not start:
                return []
            markers = (PYTHON_TAG, "{") if self.format == LLAMA3 else (MISTRAL_MARKER, "[")
            if any(start.startswith(marker) for marker in markers):
                self._whole_answer = True
            elif any(marker.startswith(start) for marker in markers):
                return []  # could still become a marker
            else:
                self._whole_answer = False
        if self._whole_answer:
            return []  # held whole: read at the end
        text, self._buffer = self._buffer, ""
        return self._emit_content(text)

    # -- output ----------------------------------------------------------------

    def _calls_or_content(self, calls: list[ToolCall] | None, raw: str) -> list:
        if not calls or any(self.tool_names and call.name not in self.tool_names for call in calls):
            return self._emit_content(raw)  # malformed, or a function the request does not offer: plain text
        out = []
        for call in calls:
            if self.calls and not self.parallel:
                break  # parallel_tool_calls false: the first call only
            self.calls.append(call)
            out.append(CallOut(len(self.calls) - 1, call))
        if out:
            self._pending_space = ""  # whitespace between content and a call is layout, not content
        return out

    def _emit_content(self, text: str) -> list:
        if not text:
            return []
        text = self._pending_space + text
        kept = text.rstrip()
        self._pending_space = text[len(kept):]
        if not kept:
            return []
        self._content.append(kept)
        return [Content(kept)]


class _ObjectScan:
    """Finds where a JSON object that arrives in pieces ends (its closing brace at depth 0, outside strings)."""

    def __init__(self):
        self.depth, self.in_string, self.escaped, self.done = 0, False, False, False

    def take(self, text: str) -> str:
        """The part of `text` that belongs to the object; nothing once it is complete."""
        for position, char in enumerate(text):
            if self.done:
                return text[:position]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                self.done = self.depth == 0
        return text


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a beginning of `marker` (held back: it may grow into it)."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def _arguments(value) -> str | None:
    """OpenAI's arguments text from a parsed value: a JSON object (given as an object or as its text)."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else None


def _call_from(obj, *, arguments_keys=("arguments", "parameters")) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    key = next((k for k in arguments_keys if k in obj), None)
    arguments = _arguments(obj.get(key) if key else None)
    return ToolCall(obj["name"], arguments) if arguments is not None else None


def _json_values(text: str, *, separators: str = "") -> list | None:
    """Every JSON value in `text`, one after another (whitespace and `separators` between); None if other text."""
    decoder, values, position = json.JSONDecoder(), [], 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.append(value)


def _tagged_call(raw: str) -> list[ToolCall] | None:
    values = _json_values(raw)
    call = _call_from(values[0]) if values and len(values) == 1 else None
    return [call] if call else None


def _all_calls(values) -> list[ToolCall] | None:
    calls = [_call_from(value) for value in values or []]
    return calls if calls and all(calls) else None


def _llama3_calls(text: str) -> list[ToolCall] | None:
    text = text.strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG):]
    return _all_calls(_json_values(text, separators=";"))


def _mistral_calls(text: str) -> list[ToolCall] | None:
    text = text.strip()
    if text.startswith(MISTRAL_MARKER) and not text[len(MISTRAL_MARKER):].lstrip().startswith("["):
        return _mistral_named_calls(text)
    if text.startswith(MISTRAL_MARKER):
        text = text[len(MISTRAL_MARKER):]
    values = _json_values(text)
    if not values or len(values) != 1 or not isinstance(values[0], list):
        return None
    return _all_calls(values[0])


def _mistral_named_calls(text: str) -> list[ToolCall] | None:
    """`[TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name[ARGS]{...}` (Mistral's tokenizer v11 and later)."""
    calls = []
    for part in text.split(MISTRAL_MARKER)[1:]:
        name, found, arguments = part.partition(MISTRAL_ARGS)
        values = _json_values(arguments) if found else None
        if not name.strip() or not values or len(values) != 1:
            return None
        call = _call_from({"name": name.strip(), "arguments": values[0]})
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _forced_calls(text: str, forced: str) -> list[ToolCall] | None:
    """A forced answer: the first JSON value in it (the constraint makes it the whole answer; without the
    constraint a model may wrap it in its own format or go on after it, which is tolerated here)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, min(starts))
    except ValueError:
        return None
    if forced == "required":
        return _all_calls(value if isinstance(value, list) else [value])
    # A named function: its arguments object, or the model wrote the whole call.
    if isinstance(value, dict) and value.get("name") == forced and set(value) <= {"name", "arguments", "parameters"}:
        call = _call_from(value)
        return [call] if call else None
    arguments = _arguments(value) if isinstance(value, dict) else None
    return [ToolCall(forced, arguments)] if arguments is not None else None


def parse_tool_calls(text: str, **options) -> tuple[str | None, list[ToolCall]]:
    """A whole answer at once: (content, calls)."""
    parser = ToolCallParser(**options)
    parser.feed(text)
    parser.finish()
    return parser.content, parser.calls


def parser_for(params: dict, chat_template) -> ToolCallParser | None:
    """The parser of a request's answer, or None when its answer is plain text (no tools, tool_choice none)."""
    from apps.catalog.tool_support import tool_support
    from apps.chat.tools import forced_name

    tools = params.get("tools") or []
    if not tools or params.get("tool_choice") == "none":
        return None
    return ToolCallParser(format=tool_support(chat_template)["tool_parser"],
                          forced=forced_name(params.get("tool_choice")), tool_names=[t["name"] for t in tools],
                          parallel=params.get("parallel_tool_calls", True))
