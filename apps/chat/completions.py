"""Chat completions: submitting a validated request, and its answer as one body or as a stream.

The HTTP entry is ChatCompletionsView (views.py), an async handler of the one
request pipeline (apps/core/endpoints.py): a sync one would hold one of
daphne's threads for the whole generation. The websocket consumer submits
through chat_completion_submit, with the same validation.
"""
from __future__ import annotations

import json
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import JsonResponse, StreamingHttpResponse
from rest_framework.exceptions import ValidationError

from apps.audio.chat_input import chat_audio_transcribed
from apps.core import events
from apps.core.db import release_database_connection
from apps.core.endpoints import validated_input
from apps.core.errors import AppError, app_error_from_event, as_app_error, error_response

from .models import GenerationRequest
from .retrieval import retrieval_public
from .serializers import ChatCompletionRequestSerializer
from .services import chat_completion_start, generation_give_up
from .tools import tool_call_deltas

logger = logging.getLogger(__name__)
READER_LEASE = settings.AIHUB_HTTP_READER_LEASE_SECONDS


def validate_chat_request(body: dict) -> dict:
    try:
        return validated_input(None, ChatCompletionRequestSerializer, body)
    except ValidationError as exc:
        raise as_app_error(exc)


# Where the per-request CPU work runs (checked for issue #10): Django's ASGI handler gives each
# request a thread of its own for thread-sensitive sync_to_async calls (ThreadSensitiveContext),
# so parsing, validation and chat_completion_create run on that request's thread, never on the
# event loop that every stream and async view shares, nor on a thread other requests wait for.
# A thread does not help against work that holds the GIL, though: C code such as `re` matching
# or json.loads never lets go of it, which is how one regex froze the whole process. So each
# step is also bounded: the body's size before parsing (request_size.py), its nesting depth,
# the serializer's limits, and task classification linear in a bounded sample (apps/catalog/placement.py).
# Pure-Python loops (the depth walk, validation) release the GIL every few milliseconds.


async def chat_completion_submit(*, key, body: dict) -> tuple[GenerationRequest, dict]:
    """Validate, store and enqueue a request that came over the websocket (its handshake checked the scope)."""
    data = await sync_to_async(validate_chat_request)(body)
    data = await chat_audio_transcribed(user=key.user, api_key=key, data=data)  # waits for a worker: not on a thread
    return await sync_to_async(chat_completion_start)(user=key.user, api_key=key, data=data), data


async def chat_completion_answer(generation: GenerationRequest, data: dict):
    """The HTTP answer to a submitted request: an SSE stream, or the whole completion once it is done."""
    if data["stream"]:
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return _describe(sse_response(sse_stream(generation, include_usage)), generation)
    return _describe(await wait_for_completion(generation), generation)


def sse_response(events) -> StreamingHttpResponse:
    """A text/event-stream of `events` (an async iterator of SSE-formatted strings), never cached or buffered."""
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must pass tokens through as they come
    return response


def _describe(response, generation: GenerationRequest):
    response["X-AIHub-Request-Id"] = str(generation.id)
    response["X-AIHub-Route"] = generation.route
    if "cache_key" in generation.params:
        response["X-AIHub-Cache"] = "hit" if generation.cache_hit else "miss"
    return response


async def generation_events(generation_id, *, after_seq: int = 0, lease_seconds: float | None = None):
    """The request's events for a client (SSE, waiting view, websocket).

    When the reader gives up (read_events' own `timeout` error, the 504), the
    request is failed in the database first, so that no worker answers it later
    for nobody. If it had ended at that very moment, its real final event is
    in the log: that one is passed on instead.
    """
    async for event in events.read_events(generation_id, after_seq=after_seq, lease_seconds=lease_seconds):
        if event["seq"] is None and not await sync_to_async(generation_give_up)(
                generation_id=generation_id, error=event["error"]):
            async for final in events.read_events(generation_id, after_seq=after_seq, idle_timeout=5):
                yield final
            return
        after_seq = event["seq"] or after_seq
        yield event


async def wait_for_generation(generation_id) -> AppError | None:
    """Follow a request to its end, under a reader lease: the error it failed with, or None once it is done."""
    finished = False
    try:
        await release_database_connection()
        async for event in generation_events(generation_id, lease_seconds=READER_LEASE):
            if event["type"] == events.ERROR:
                finished = True
                return app_error_from_event(event["error"])
            if event["type"] == events.DONE:
                finished = True
        return None
    finally:
        # The client went away (Django cancels the view) or we gave up: free the worker
        # now; the reader lease would stop it shortly anyway.
        if not finished:
            await events.request_cancel(generation_id)


async def wait_for_completion(generation: GenerationRequest, *, body=None) -> JsonResponse:
    """The whole answer as one JSON body, shaped by `body(row)` (a chat.completion unless told otherwise)."""
    error = await wait_for_generation(generation.id)
    if error is not None:
        return error_response(error)
    stored = await GenerationRequest.objects.aget(id=generation.id)
    return JsonResponse((body or completion_body)(stored))


def completion_body(generation: GenerationRequest) -> dict:
    return {
        "id": generation.completion_id,
        "object": "chat.completion",
        "created": int(generation.created_at.timestamp()),
        "model": generation.model,
        "system_fingerprint": _fingerprint(generation),
        "choices": _choices(generation),
        "usage": generation.usage,
        "conversation_id": _conversation_id(generation),
        **retrieval_field(generation),
    }


def retrieval_field(generation: GenerationRequest) -> dict:
    """`retrieval` (the chunks the prompt held), only on answers to requests that asked for it."""
    record = generation.params.get("retrieval")
    return {"retrieval": retrieval_public(record)} if record is not None else {}


def _choices(generation: GenerationRequest) -> list[dict]:
    """Every choice (`n`) with its logprobs and tool calls from `output`, else the one answer of `completion`."""
    stored = generation.output.get("choices") or [
        {"index": 0, "text": generation.completion, "finish_reason": generation.finish_reason, "logprobs": None}]
    return [{"index": choice["index"],
             "message": assistant_message(choice["text"], choice.get("tool_calls")),
             "logprobs": choice.get("logprobs"),
             "finish_reason": choice["finish_reason"] or "stop"} for choice in stored]


def assistant_message(text: str, tool_calls: list[dict] | None) -> dict:
    """OpenAI's assistant message: with tool calls, `content` is the text before them, or null."""
    message = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message.update(content=text or None, tool_calls=tool_calls)
    return message


def _fingerprint(generation: GenerationRequest) -> str | None:
    return generation.params.get("system_fingerprint")


def _conversation_id(generation: GenerationRequest) -> str | None:
    return str(generation.conversation_id) if generation.conversation_id else None


def _chunk(generation: GenerationRequest, created: int, delta: dict, finish_reason=None, *, index: int = 0,
           logprobs: list[dict] | None = None) -> dict:
    return {
        "id": generation.completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": generation.model,
        "system_fingerprint": _fingerprint(generation),
        "conversation_id": _conversation_id(generation),
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason,
                     "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}],
    }


def _finish_chunks(generation: GenerationRequest, created: int, event: dict) -> list[dict]:
    """One chunk with its finish_reason per choice (`done` lists them when n > 1)."""
    choices = event.get("choices") or [{"index": 0, "finish_reason": event["finish_reason"]}]
    return [_chunk(generation, created, {}, finish_reason=choice["finish_reason"], index=choice["index"])
            for choice in choices]


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


async def sse_stream(generation: GenerationRequest, include_usage: bool):
    created = int(time.time())
    finished = False
    try:
        for index in range(generation.params.get("n") or 1):
            yield _sse(_chunk(generation, created, {"role": "assistant", "content": ""}, index=index))
        # After the first chunk: the worker is busy with the prompt, so this costs the client nothing.
        await release_database_connection()
        async for event in generation_events(generation.id, lease_seconds=READER_LEASE):
            if event["type"] == events.TOKEN:
                yield _sse(_chunk(generation, created, {"content": event["text"]}, index=event.get("index", 0),
                                  logprobs=event.get("logprobs")))
            elif event["type"] == events.TOOL_CALL:
                for delta in tool_call_deltas(event):
                    yield _sse(_chunk(generation, created, delta, index=event.get("index", 0)))
            elif event["type"] == events.DONE:
                finished = True
                for chunk in _finish_chunks(generation, created, event):
                    yield _sse({**chunk, **retrieval_field(generation)})
                if include_usage:
                    usage_chunk = _chunk(generation, created, {})
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = event["usage"]
                    yield _sse({**usage_chunk, **retrieval_field(generation)})
            elif event["type"] == events.ERROR:
                finished = True
                yield _sse({"error": event["error"]})
        yield _sse("[DONE]")
    finally:
        if not finished:
            await events.request_cancel(generation.id)
