"""OpenAI's legacy text completion (POST /api/v1/completions, TextCompletionsView in views.py): its answer.

Each prompt is one generation request (apps/chat/text_services.py) and one
choice; the requests of a list run side by side in the worker's batch. Waiting,
the reader lease, cancel on disconnect and error handling are chat's
(`wait_for_generation`, `generation_events`); only the bodies differ.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

from django.http import JsonResponse

from apps.core import events
from apps.core.db import release_database_connection
from apps.core.errors import AppError, error_response

from .completions import READER_LEASE, _describe, _sse, generation_events, sse_response, wait_for_generation
from .models import GenerationRequest


async def text_completion_answer(generations: list[GenerationRequest], data: dict):
    """The HTTP answer to submitted prompts: an SSE stream, or the whole text_completion once all are done."""
    echoes = [prompt if data["echo"] else "" for prompt in data["prompt"]]
    if data["stream"]:
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        return _headers(sse_response(text_sse_stream(generations, echoes, include_usage)), generations)
    error = await _wait_all(generations)
    if error is not None:
        return error_response(error)
    stored = {g.id: g async for g in GenerationRequest.objects.filter(id__in=[g.id for g in generations])}
    return _headers(JsonResponse(text_completion_body([stored[g.id] for g in generations], echoes)), generations)


def _headers(response, generations: list[GenerationRequest]):
    _describe(response, generations[0])
    response["X-AIHub-Request-Id"] = ",".join(str(g.id) for g in generations)
    return response


async def _wait_all(generations: list[GenerationRequest]) -> AppError | None:
    """Wait for every prompt's request; on the first error, stop waiting and cancel the others."""
    tasks = [asyncio.create_task(wait_for_generation(g.id)) for g in generations]
    try:
        for next_done in asyncio.as_completed(tasks):
            error = await next_done
            if error is not None:
                return error
        return None
    finally:
        for task in tasks:
            task.cancel()  # a task still waiting sends its request's cancel as it ends
        await asyncio.gather(*tasks, return_exceptions=True)


def text_completion_id(generation: GenerationRequest) -> str:
    return f"cmpl-{generation.id.hex}"


def text_completion_body(generations: list[GenerationRequest], echoes: list[str]) -> dict:
    """OpenAI's `text_completion`: one choice per prompt, in the prompts' order, usage summed."""
    first = generations[0]
    prompt_tokens = sum(g.prompt_tokens for g in generations)
    completion_tokens = sum(g.completion_tokens for g in generations)
    return {
        "id": text_completion_id(first),
        "object": "text_completion",
        "created": int(first.created_at.timestamp()),
        "model": first.model,
        "system_fingerprint": first.params.get("system_fingerprint"),
        "choices": [{"index": index, "text": echo + generation.completion,
                     "logprobs": _choice_logprobs(generation, echo),
                     "finish_reason": generation.finish_reason or "stop"}
                    for index, (generation, echo) in enumerate(zip(generations, echoes))],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def _choice_logprobs(generation: GenerationRequest, echo: str) -> dict | None:
    if not generation.params.get("logprobs"):
        return None
    choices = (generation.output or {}).get("choices") or [{}]
    entries = ((choices[0].get("logprobs") or {}).get("content")) or []
    return legacy_logprobs(entries, start=len(echo))


def legacy_logprobs(entries: list[dict], *, start: int = 0) -> dict:
    """Chat-style logprob entries ({token, logprob, top_logprobs: [{token, logprob}]}) in the legacy shape.

    `start` is where the first token's text begins in the choice's text (after an echoed prompt).
    """
    offsets, position = [], start
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {"tokens": [entry["token"] for entry in entries],
            "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [{top["token"]: top["logprob"] for top in entry.get("top_logprobs") or []}
                             for entry in entries],
            "text_offset": offsets}


def _chunk(generation: GenerationRequest, created: int, index: int, text: str, finish_reason=None,
           logprobs=None) -> dict:
    return {"id": text_completion_id(generation), "object": "text_completion", "created": created,
            "model": generation.model, "system_fingerprint": generation.params.get("system_fingerprint"),
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


async def _merged_events(generations: list[GenerationRequest]):
    """(choice index, event) of every request as they come, until each has ended; a reader's failure is raised."""
    inbox: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, generation: GenerationRequest):
        try:
            async for event in generation_events(generation.id, lease_seconds=READER_LEASE):
                await inbox.put((index, event))
            await inbox.put((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the stream, which ends with it
            await inbox.put((index, exc))

    tasks = [asyncio.create_task(pump(index, g)) for index, g in enumerate(generations)]
    try:
        open_readers = len(tasks)
        while open_readers:
            index, event = await inbox.get()
            if isinstance(event, Exception):
                raise event
            if event is None:
                open_readers -= 1
                continue
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


async def text_sse_stream(generations: list[GenerationRequest], echoes: list[str], include_usage: bool):
    """SSE `text_completion` chunks (one choice each), then a usage chunk if asked for, then [DONE]."""
    created = int(time.time())
    first = generations[0]
    unfinished = {g.id for g in generations}
    usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    try:
        for index, echo in enumerate(echoes):
            if echo:
                yield _sse(_chunk(first, created, index, echo))
        await release_database_connection()
        failed = False
        offsets = [len(echo) for echo in echoes]  # where each choice's next token starts in its text
        async with aclosing(_merged_events(generations)) as merged:
            async for index, event in merged:
                if event["type"] == events.TOKEN:
                    logprobs = None
                    if generations[index].params.get("logprobs"):
                        logprobs = legacy_logprobs(event.get("logprobs") or [], start=offsets[index])
                    offsets[index] += len(event["text"])
                    yield _sse(_chunk(first, created, index, event["text"], logprobs=logprobs))
                elif event["type"] == events.DONE:
                    unfinished.discard(generations[index].id)
                    usage = {name: usage[name] + event["usage"][name] for name in usage}
                    yield _sse(_chunk(first, created, index, "", finish_reason=event["finish_reason"]))
                elif event["type"] == events.ERROR:
                    unfinished.discard(generations[index].id)
                    failed = True
                    yield _sse({"error": event["error"]})
                    break  # the other prompts are cancelled below: the response has failed
        if include_usage and not failed:
            yield _sse({**_chunk(first, created, 0, ""), "choices": [], "usage": usage})
        yield _sse("[DONE]")
    finally:
        for generation_id in unfinished:
            await events.request_cancel(generation_id)
