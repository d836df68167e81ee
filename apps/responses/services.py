"""A Responses API request is a chat completion: same queue, worker, limits, events and stored rows.

What the Responses API adds is mapped here: input items become chat messages
(function calls become an assistant message's tool_calls, their outputs `tool`
messages), `instructions` is a system message for this request only, and
`previous_response_id` continues the conversation that response belongs to,
forked at that response when the conversation went on after it.
"""
from __future__ import annotations

import uuid

from django.db import transaction

from apps.chat.completions import validate_chat_request
from apps.chat.message_embeddings import message_embeddings_schedule
from apps.chat.models import Conversation, GenerationRequest, Message
from apps.chat.retrieval import DEFAULT_RESULTS, retrieval_search
from apps.chat.services import chat_completion_create
from apps.core.errors import AppError, NotFoundError
from apps.core.events import request_cancel_sync

PREFIX = "resp_"


def response_id(generation: GenerationRequest) -> str:
    return f"{PREFIX}{generation.id.hex}"


def response_get(*, user, response_id: str, param: str | None = None) -> GenerationRequest:
    """The user's stored response; another user's, a deleted one or a chat completion's row is a 404."""
    generation = None
    if response_id.startswith(PREFIX):
        try:
            generation = GenerationRequest.objects.filter(
                user=user, id=uuid.UUID(hex=response_id[len(PREFIX):]), params__has_key="response").first()
        except ValueError:
            generation = None
    if generation is None or generation.params["response"].get("deleted"):
        raise NotFoundError(f"No response with id '{response_id}'.", param=param, code="response_not_found")
    return generation


def response_create(*, key, data: dict) -> GenerationRequest:
    """Store and enqueue a validated Responses request (the pipeline checked the key's inference scope).

    A file_search tool is chat's retrieval: its search runs first, outside the transaction (it waits for the
    embedding worker), and its chunks go into the prompt; objects.py shows it as a file_search_call item.
    """
    chat = _chat_request(data)
    found = None
    if chat.get("retrieval"):
        index = next(i for i, tool in enumerate(data["tools"]) if tool["type"] == "file_search")
        found = retrieval_search(user=key.user, spec=chat["retrieval"], param=f"tools.{index}",
                                 messages=[{"role": "user", "content": _last_user_text(data["input"])}])
    with transaction.atomic():
        if data.get("previous_response_id"):
            chat["conversation_id"] = str(_conversation_after(user=key.user,
                                                              previous_response_id=data["previous_response_id"]))
        validated = validate_chat_request(chat)  # every rule of chat applies to the mapped request
        echo = {name: data.get(name) for name in (
            "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
            "parallel_tool_calls", "text", "metadata", "previous_response_id", "truncation", "user", "store",
            "include")}
        return chat_completion_create(user=key.user, api_key=key, data=validated,
                                      instructions=data.get("instructions") or None,
                                      extra_params={"response": echo}, retrieval_found=found)


def _last_user_text(items: list[dict]) -> str:
    """The text of the last user message: what file_search searches for (empty if none: retrieval says so)."""
    for item in reversed(items):
        if item["type"] == "message" and item["role"] == "user":
            content = item["content"]
            return content if isinstance(content, str) else "".join(
                part["text"] for part in content if part["type"] == "text")
    return ""


def _chat_request(data: dict) -> dict:
    chat = {"messages": chat_messages(data["input"]), "stream": data["stream"]}
    if data.get("model"):
        chat["model"] = data["model"]
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                         ("user", "user"), ("metadata", "metadata"), ("parallel_tool_calls", "parallel_tool_calls")):
        if data.get(ours) is not None:
            chat[theirs] = data[ours]
    functions = [tool for tool in data.get("tools") or [] if tool["type"] == "function"]
    if functions:
        chat["tools"] = [{"type": "function", "function": {
            key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}}
            for tool in functions]
    file_search = next((tool for tool in data.get("tools") or [] if tool["type"] == "file_search"), None)
    if file_search:
        chat["retrieval"] = {"vector_store_ids": file_search["vector_store_ids"],
                             "max_num_results": file_search.get("max_num_results") or DEFAULT_RESULTS,
                             "score_threshold": (file_search.get("ranking_options") or {}).get("score_threshold", 0.0)}
        if file_search.get("filters") is not None:
            chat["retrieval"]["filters"] = file_search["filters"]
    if "tool_choice" in data:
        choice = data["tool_choice"]
        if isinstance(choice, dict) and choice.get("type") == "function":
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        chat["tool_choice"] = choice
    text_format = (data.get("text") or {}).get("format")
    if text_format and text_format.get("type") != "text":
        if text_format.get("type") == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                key: text_format[key] for key in ("name", "description", "schema", "strict") if key in text_format}}
        else:
            chat["response_format"] = text_format
    return chat


def chat_messages(items: list[dict]) -> list[dict]:
    """Input items as chat messages; consecutive function calls are one assistant message's tool_calls."""
    messages: list[dict] = []
    for item in items:
        if item["type"] == "message":
            messages.append({"role": item["role"], "content": item["content"]})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and previous.get("tool_calls") and not previous["content"]:
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def _conversation_after(*, user, previous_response_id: str):
    """The conversation that continues after a response: its own, or a copy up to it if it went on since."""
    previous = response_get(user=user, response_id=previous_response_id, param="previous_response_id")
    answer = Message.objects.filter(generation=previous).first()
    if previous.state != GenerationRequest.State.SUCCEEDED or previous.conversation_id is None or answer is None:
        raise AppError(f"The response '{previous_response_id}' has not completed, so nothing can follow it.",
                       param="previous_response_id", code="previous_response_not_completed")
    conversation = previous.conversation
    if not conversation.messages.filter(id__gt=answer.id).exists():
        return conversation.id
    fork = Conversation.objects.create(user=user, model=conversation.model, title=conversation.title)
    Message.objects.bulk_create([
        Message(conversation=fork, role=m.role, content=m.content, tool_calls=m.tool_calls,
                tool_call_id=m.tool_call_id, parts=m.parts, retrieval=m.retrieval)
        for m in conversation.messages.filter(id__lte=answer.id)])
    message_embeddings_schedule(conversation_id=fork.id)
    return fork.id


@transaction.atomic
def response_delete(*, user, response_id: str) -> None:
    """Cancel it if it still runs, remove its answer from its conversation, and keep only the usage numbers."""
    generation = response_get(user=user, response_id=response_id)
    if not generation.is_finished:
        request_cancel_sync(generation.id)
    Message.objects.filter(generation=generation).delete()
    params = {**generation.params, "response": {"deleted": True}}
    params.pop("retrieval", None)  # the chunks' text and the query go with the answer
    GenerationRequest.objects.filter(id=generation.id).update(params=params, prompt_messages=[], completion="",
                                                              output={})
