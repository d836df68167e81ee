"""A request's answer from its choices (`n`): what the row stores and the `done` event announces.

`completion`, `finish_reason` and the conversation's assistant message are the first choice's; usage counts
the prompt once and every choice's tokens; `output["choices"]` holds each choice (text, finish_reason,
logprobs) when there is more than one or they carry logprobs (apps/chat/models.py, docs/api.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RequestResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled (any choice cancelled: the request was)
    output: dict = field(default_factory=dict)


def request_result(results: list, logprobs: list[list[dict]], *, params: dict) -> RequestResult:
    """`results` are the choices' GenerationResults in index order; `logprobs` their entries."""
    first = results[0]
    cancelled = any(result.finish_reason == "cancelled" for result in results)
    output = {}
    if len(results) > 1 or params.get("logprobs"):
        output = {"choices": [
            {"index": index, "text": result.text, "finish_reason": result.finish_reason,
             "logprobs": {"content": logprobs[index], "refusal": None} if params.get("logprobs") else None,
             "tool_calls": None}
            for index, result in enumerate(results)]}
    return RequestResult(first.text, first.prompt_tokens, sum(result.completion_tokens for result in results),
                         "cancelled" if cancelled else first.finish_reason, output)
