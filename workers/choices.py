"""A request's answer from its choices (`n`): what the row stores and the `done` event announces.

`completion`, `finish_reason` and the conversation's assistant message are the first choice's; usage counts
the prompt once and every choice's tokens; `output["choices"]` holds each choice (text, finish_reason,
logprobs, tool calls) when there is more than one, or they carry logprobs or tool calls (apps/chat/models.py,
docs/api.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | tool_calls | cancelled (any choice cancelled: the request was)
    output: dict = field(default_factory=dict)
    tool_calls: list[dict] | None = None  # the first choice's, for the conversation's assistant message


def request_result(results: list, logprobs: list[list[dict]], *, params: dict, parsers: list | None = None
                   ) -> RequestResult:
    """`results` are the choices' GenerationResults in index order, `logprobs` their entries, `parsers` their
    tool-call parsers (None without tools): a choice's text is then what lies outside its calls, and one that
    ends by calling tools ends with "tool_calls" (one cut by max_tokens keeps "length", as OpenAI's)."""
    cancelled = any(result.finish_reason == "cancelled" for result in results)
    choices = []
    for index, (result, parser) in enumerate(zip(results, parsers or [None] * len(results))):
        text, finish_reason, calls = result.text, result.finish_reason, None
        if parser is not None and not cancelled:
            calls = [call.as_openai() for call in parser.calls] or None
            text = parser.content or ""
            if calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        choices.append({"index": index, "text": text, "finish_reason": finish_reason,
                        "logprobs": {"content": logprobs[index], "refusal": None} if params.get("logprobs") else None,
                        "tool_calls": calls})
    first = choices[0]
    keep = len(results) > 1 or params.get("logprobs") or any(choice["tool_calls"] for choice in choices)
    return RequestResult(first["text"], results[0].prompt_tokens, sum(r.completion_tokens for r in results),
                         "cancelled" if cancelled else first["finish_reason"], {"choices": choices} if keep else {},
                         first["tool_calls"])
