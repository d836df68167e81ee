"""The `response` object and its stream of events, built from a chat request row and its event log.

docs/api.md#responses lists the events; they are OpenAI's, in OpenAI's order:
response.created, response.in_progress, then per output item
output_item.added, (content_part.added, output_text.delta..., output_text.done,
content_part.done | function_call_arguments.delta..., .done), output_item.done,
and last response.completed (or response.incomplete / response.failed).
"""
from __future__ import annotations

import json

from apps.chat.completions import READER_LEASE, generation_events
from apps.chat.models import GenerationRequest
from apps.core import events
from apps.core.db import release_database_connection

from .services import response_id

State = GenerationRequest.State
STATUS = {State.QUEUED: "queued", State.RUNNING: "in_progress", State.SUCCEEDED: "completed",
          State.FAILED: "failed", State.CANCELLED: "cancelled"}


def response_error(error: dict) -> dict:
    """A worker's error object (apps/core/errors.error_object) as a response's `error`: OpenAI's Responses
    shape is {code, message}, with a code always."""
    return {"code": error.get("code") or "server_error", "message": error["message"]}


def response_object(generation: GenerationRequest, *, status: str | None = None, output: list | None = None) -> dict:
    """The response as GET /responses/{id} shows it; `status` and `output` override the row's while streaming."""
    echo = generation.params.get("response") or {}
    incomplete = None
    if status is None:
        status = STATUS[generation.state]
        if generation.state == State.SUCCEEDED and generation.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    error = None
    if generation.state == State.FAILED and generation.error and status == "failed":
        error = response_error(generation.error)
    finished = generation.state in (State.SUCCEEDED, State.CANCELLED) and status != "in_progress"
    return {
        "id": response_id(generation),
        "object": "response",
        "created_at": int(generation.created_at.timestamp()),
        "completed_at": int(generation.finished_at.timestamp()) if finished and generation.finished_at else None,
        "status": status,
        "model": generation.model,
        "output": output_items(generation) if output is None else output,
        "error": error,
        "incomplete_details": incomplete,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "temperature": generation.params.get("temperature"),
        "top_p": generation.params.get("top_p"),
        "tools": [_tool(tool) for tool in echo.get("tools") or []],
        "tool_choice": _tool_choice(echo.get("tool_choice")),
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": echo.get("previous_response_id"),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "truncation": "disabled",
        "metadata": echo.get("metadata") or {},
        "store": True,
        "user": echo.get("user"),
        "usage": usage(generation.prompt_tokens, generation.completion_tokens) if finished else None,
        "conversation_id": str(generation.conversation_id) if generation.conversation_id else None,
    }


def _tool(tool: dict) -> dict:
    if tool.get("type") == "file_search":
        return {"type": "file_search", "vector_store_ids": tool["vector_store_ids"],
                "max_num_results": tool.get("max_num_results"), "filters": tool.get("filters"),
                "ranking_options": tool.get("ranking_options") or {"ranker": "auto", "score_threshold": 0.0}}
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict")}


def _tool_choice(choice):
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        return {"type": "function", "name": name}
    return choice or "auto"


def usage(input_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens}


def output_items(generation: GenerationRequest) -> list[dict]:
    if generation.state not in (State.SUCCEEDED, State.CANCELLED):
        return []
    choices = (generation.output or {}).get("choices") or [{}]
    calls = choices[0].get("tool_calls") or []
    items = [file_search_item(generation, status="completed")] if _searched(generation) else []
    if generation.completion or not calls:
        items.append(message_item(generation, generation.completion, status="completed"))
    items += [function_call_item(call, status="completed") for call in calls]
    return items


def _searched(generation: GenerationRequest) -> bool:
    """Whether the response ran the file_search tool (its search is chat's retrieval, params["retrieval"])."""
    return "retrieval" in generation.params and any(
        tool.get("type") == "file_search" for tool in (generation.params.get("response") or {}).get("tools") or [])


def file_search_item(generation: GenerationRequest, *, status: str) -> dict:
    """OpenAI's file_search_call: the query searched and, with include file_search_call.results, the chunks the
    model was given (those that fit its context, best first)."""
    record = generation.params["retrieval"]
    included = "file_search_call.results" in ((generation.params.get("response") or {}).get("include") or [])
    results = [{"file_id": chunk["file_id"], "filename": chunk["filename"], "score": chunk["score"],
                "text": chunk.get("text", ""), "attributes": chunk.get("attributes") or {}}
               for chunk in record["chunks"]] if included else None
    return {"type": "file_search_call", "id": f"fs_{generation.id.hex}", "status": status,
            "queries": [record["query"]], "results": results}


def citations(generation: GenerationRequest, text: str) -> list[dict]:
    """file_citation annotations for an answer given file_search chunks: one per file the model was shown, best
    first, at the end of the text (the model does not mark where it used them; OpenAI's index is a position)."""
    if not text or not _searched(generation):
        return []
    seen, annotations = set(), []
    for chunk in generation.params["retrieval"]["chunks"]:
        if chunk["file_id"] not in seen:
            seen.add(chunk["file_id"])
            annotations.append({"type": "file_citation", "file_id": chunk["file_id"], "filename": chunk["filename"],
                                "index": len(text)})
    return annotations


def message_item(generation: GenerationRequest, text: str | None, *, status: str) -> dict:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": citations(generation, text),
                                        "logprobs": []}]
    return {"type": "message", "id": f"msg_{generation.id.hex}", "status": status, "role": "assistant",
            "content": content}


def function_call_item(call: dict, *, status: str) -> dict:
    return {"type": "function_call", "id": f"fc_{call['id']}", "call_id": call["id"],
            "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": status}


class _Stream:
    """Numbers the events and keeps the output items built so far."""

    def __init__(self, generation: GenerationRequest):
        self.generation = generation
        self.sequence = 0
        self.items: list[dict] = []
        self.text: str | None = None  # the message item's text, once the message item is open
        self.calls: dict[int, dict] = {}  # tool_index -> the open function call item

    def event(self, type: str, **data) -> str:
        payload = {"type": type, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return f"event: {type}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"

    def response(self, status: str) -> dict:
        return response_object(self.generation, status=status, output=list(self.items))

    def open_message(self):
        self.text = ""
        self.items.append(message_item(self.generation, None, status="in_progress"))
        index = len(self.items) - 1
        yield self.event("response.output_item.added", output_index=index, item=self.items[index])
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        yield self.event("response.content_part.added", item_id=self.items[index]["id"], output_index=index,
                         content_index=0, part=part)

    def file_search(self):
        """The search ran before the request was enqueued: its events come first, in OpenAI's order."""
        item = file_search_item(self.generation, status="in_progress")
        self.items.append(item)
        index = len(self.items) - 1
        yield self.event("response.output_item.added", output_index=index, item=dict(item, results=None))
        for stage in ("in_progress", "searching", "completed"):
            yield self.event(f"response.file_search_call.{stage}", output_index=index, item_id=item["id"])
        self.items[index] = {**item, "status": "completed"}
        yield self.event("response.output_item.done", output_index=index, item=self.items[index])

    def close_message(self):
        index = next(i for i, item in enumerate(self.items) if item["type"] == "message")
        item = self.items[index]
        annotations = citations(self.generation, self.text)
        for number, annotation in enumerate(annotations):
            yield self.event("response.output_text.annotation.added", item_id=item["id"], output_index=index,
                             content_index=0, annotation_index=number, annotation=annotation)
        part = {"type": "output_text", "text": self.text, "annotations": annotations, "logprobs": []}
        yield self.event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                         text=self.text, logprobs=[])
        yield self.event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                         part=part)
        self.items[index] = {**item, "status": "completed", "content": [part]}
        yield self.event("response.output_item.done", output_index=index, item=self.items[index])

    def close_calls(self):
        for call in self.calls.values():
            index = self.items.index(call)
            yield self.event("response.function_call_arguments.done", item_id=call["id"], output_index=index,
                             arguments=call["arguments"])
            call["status"] = "completed"
            yield self.event("response.output_item.done", output_index=index, item=call)


async def response_stream(generation: GenerationRequest):
    """The SSE body of a streamed response."""
    stream = _Stream(generation)
    finished = False
    try:
        yield stream.event("response.created", response=stream.response("in_progress"))
        yield stream.event("response.in_progress", response=stream.response("in_progress"))
        if _searched(generation):
            for line in stream.file_search():
                yield line
        await release_database_connection()
        async for event in generation_events(generation.id, lease_seconds=READER_LEASE):
            if event["type"] == events.TOKEN and (event.get("index") or 0) == 0:
                if stream.text is None:
                    for line in stream.open_message():
                        yield line
                stream.text += event["text"]
                index = next(i for i, item in enumerate(stream.items) if item["type"] == "message")
                yield stream.event("response.output_text.delta", item_id=stream.items[index]["id"],
                                   output_index=index, content_index=0, delta=event["text"], logprobs=[])
            elif event["type"] == "tool_call" and (event.get("index") or 0) == 0:
                for line in _call_delta(stream, event):
                    yield line
            elif event["type"] == events.DONE:
                finished = True
                for line in _finish(stream):
                    yield line
                stored = await GenerationRequest.objects.aget(id=generation.id)
                stream.generation = stored
                kind = {"completed": "response.completed", "incomplete": "response.incomplete",
                        "cancelled": "response.failed"}.get(response_object(stored)["status"], "response.completed")
                yield stream.event(kind, response=response_object(stored))
            elif event["type"] == events.ERROR:
                finished = True
                stored = await GenerationRequest.objects.aget(id=generation.id)
                body = response_object(stored, status="failed", output=list(stream.items))
                body["error"] = response_error(event["error"])
                yield stream.event("response.failed", response=body)
    finally:
        if not finished:
            await events.request_cancel(generation.id)


def _call_delta(stream: _Stream, event: dict):
    call = stream.calls.get(event["tool_index"])
    if call is None:
        call = {"type": "function_call", "id": f"fc_{event['id']}", "call_id": event["id"], "name": event["name"],
                "arguments": "", "status": "in_progress"}
        stream.calls[event["tool_index"]] = call
        stream.items.append(call)
        yield stream.event("response.output_item.added", output_index=len(stream.items) - 1, item=dict(call))
    if event.get("arguments"):
        call["arguments"] += event["arguments"]
        yield stream.event("response.function_call_arguments.delta", item_id=call["id"],
                           output_index=stream.items.index(call), delta=event["arguments"])


def _finish(stream: _Stream):
    if stream.text is None and not stream.calls:
        for line in stream.open_message():  # an empty answer is still a message, as OpenAI sends it
            yield line
    if stream.text is not None:
        for line in stream.close_message():
            yield line
    for line in stream.close_calls():
        yield line
