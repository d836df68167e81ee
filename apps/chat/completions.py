"""POST /api/v1/chat/completions: an async view, because DRF views are sync-only.

A sync view would hold one of daphne's threads for the whole generation (and
Django runs sync views on one shared thread by default). Validation still uses
the DRF serializer, and errors still leave in the one error shape.
"""
from __future__ import annotations

import json
import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ValidationError

from apps.accounts.models import Scope
from apps.accounts.services import require_scope
from apps.core import events
from apps.core.async_views import (
    authenticate_request,
    parse_json_body,
    release_database_connection,
    require_method,
)
from apps.core.errors import AppError, app_error_from_event, as_app_error, error_response

from .models import GenerationRequest
from .serializers import ChatCompletionRequestSerializer
from .services import chat_completion_create, generation_give_up
from .tools import answer_tool_calls, tool_call_deltas

logger = logging.getLogger(__name__)
READER_LEASE = settings.AIHUB_HTTP_READER_LEASE_SECONDS


def validate_chat_request(body: dict) -> dict:
    serializer = ChatCompletionRequestSerializer(data=body)
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError as exc:
        raise as_app_error(exc)
    return serializer.validated_data


# Where the per-request CPU work runs (checked for issue #10): Django's ASGI handler gives each
# request a thread of its own for thread-sensitive sync_to_async calls (ThreadSensitiveContext),
# so parsing, validation and chat_completion_create run on that request's thread, never on the
# event loop that every stream and async view shares, nor on a thread other requests wait for.
# A thread does not help against work that holds the GIL, though: C code such as `re` matching
# or json.loads never lets go of it, which is how one regex froze the whole process. So each
# step is also bounded: the body's size before parsing (request_size.py), its nesting depth,
# the serializer's limits, and task classification linear in a bounded sample (routing.py).
# Pure-Python loops (the depth walk, validation) release the GIL every few milliseconds.


def _validate_and_create(*, key, body: dict) -> tuple[GenerationRequest, dict]:
    data = validate_chat_request(body)
    return chat_completion_create(user=key.user, api_key=key, data=data), data


async def chat_completion_submit(*, key, body: dict) -> tuple[GenerationRequest, dict]:
    """Validate, store and enqueue; shared by the REST view and the websocket consumer."""
    require_scope(key, Scope.INFERENCE)
    return await sync_to_async(_validate_and_create)(key=key, body=body)


@csrf_exempt
async def chat_completions_view(request: HttpRequest):
    try:
        require_method(request, "POST")
        key = await authenticate_request(request)
        body = await sync_to_async(parse_json_body)(request)
        generation, data = await chat_completion_submit(key=key, body=body)
    except AppError as error:
        return error_response(error)
    if data["stream"]:
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        response = StreamingHttpResponse(sse_stream(generation, include_usage), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies must pass tokens through as they come
        _describe(response, generation)
        return response
    return _describe(await wait_for_completion(generation), generation)


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


async def wait_for_completion(generation: GenerationRequest) -> JsonResponse:
    finished = False
    try:
        await release_database_connection()
        async for event in generation_events(generation.id, lease_seconds=READER_LEASE):
            if event["type"] == events.ERROR:
                finished = True
                return error_response(app_error_from_event(event["error"]))
            if event["type"] == events.DONE:
                finished = True
        stored = await GenerationRequest.objects.aget(id=generation.id)
        return JsonResponse(completion_body(stored))
    finally:
        # The client went away (Django cancels the view) or we gave up: free the worker
        # now; the reader lease would stop it shortly anyway.
        if not finished:
            await events.request_cancel(generation.id)


def completion_body(generation: GenerationRequest) -> dict:
    return {
        "id": generation.completion_id,
        "object": "chat.completion",
        "created": int(generation.created_at.timestamp()),
        "model": generation.model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": assistant_message(generation),
            "logprobs": None,
            "finish_reason": generation.finish_reason or "stop",
        }],
        "usage": generation.usage,
        "conversation_id": _conversation_id(generation),
    }


def assistant_message(generation: GenerationRequest) -> dict:
    message = {"role": "assistant", "content": generation.completion, "refusal": None}
    tool_calls = answer_tool_calls(generation)
    if tool_calls:
        message.update(content=generation.completion or None, tool_calls=tool_calls)
    return message


def _conversation_id(generation: GenerationRequest) -> str | None:
    return str(generation.conversation_id) if generation.conversation_id else None


def _chunk(generation: GenerationRequest, created: int, delta: dict, finish_reason=None) -> dict:
    return {
        "id": generation.completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": generation.model,
        "system_fingerprint": None,
        "conversation_id": _conversation_id(generation),
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def _sse(payload: dict | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


async def sse_stream(generation: GenerationRequest, include_usage: bool):
    created = int(time.time())
    finished = False
    try:
        yield _sse(_chunk(generation, created, {"role": "assistant", "content": ""}))
        # After the first chunk: the worker is busy with the prompt, so this costs the client nothing.
        await release_database_connection()
        async for event in generation_events(generation.id, lease_seconds=READER_LEASE):
            if event["type"] == events.TOKEN:
                yield _sse(_chunk(generation, created, {"content": event["text"]}))
            elif event["type"] == events.TOOL_CALL:
                for delta in tool_call_deltas(event):
                    yield _sse(_chunk(generation, created, delta))
            elif event["type"] == events.DONE:
                finished = True
                yield _sse(_chunk(generation, created, {}, finish_reason=event["finish_reason"]))
                if include_usage:
                    usage_chunk = _chunk(generation, created, {})
                    usage_chunk["choices"] = []
                    usage_chunk["usage"] = event["usage"]
                    yield _sse(usage_chunk)
            elif event["type"] == events.ERROR:
                finished = True
                yield _sse({"error": event["error"]})
        yield _sse("[DONE]")
    finally:
        if not finished:
            await events.request_cancel(generation.id)
