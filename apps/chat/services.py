"""Writes of the chat app: creating completions, deleting conversations."""
from __future__ import annotations

import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import celeryconfig
from apps.accounts.limits import estimate_prompt_tokens, limits_admit, limits_settle
from apps.accounts.models import Scope
from apps.accounts.services import preferred_model_get
from apps.catalog.models import ModelEntry
from apps.catalog.placement import Candidate, Performance, Route, choose_model, choose_worker, task_type
from apps.catalog.selectors import model_check_use, model_get, model_list
from apps.catalog.worker_registry import WorkerState, live_workers
from apps.core.errors import AppError
from apps.core.events import DONE, ERROR, TOKEN, EventWriter, request_cancel_sync
from apps.core.publishing import enqueue_on_commit, send_task
from apps.monitoring.counters import request_metrics_record
from apps.vision.services import message_parts_store, part_image_ids, stored_images_release

from .cache import cache_get, cache_key, cache_wanted
from .message_embeddings import message_embeddings_schedule
from .models import Conversation, GenerationRequest, Message
from .retrieval import prompt_budget, retrieval_prompt, retrieval_public, retrieval_record, retrieval_search
from .sampling import sampling_params
from .selectors import conversation_get, model_performance
from .tools import stored_message, tool_messages_check, tool_params


def _title_from(messages: list[dict]) -> str:
    first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
    return " ".join(first_user.split())[:80]


AUTO = "auto"


def _candidate(entry: ModelEntry) -> Candidate:
    return Candidate(entry.id, tuple(entry.capabilities), entry.estimated_bytes_by_device())


def chat_route(*, user, requested: str | None, messages: list[dict], workers: list[WorkerState],
               api_key=None) -> tuple[ModelEntry, Route]:
    """Which model serves the request and which queue takes it (apps/catalog/placement.py).

    Only models the user may use are candidates, for `auto` too: a preference for a model that is no
    longer shared with them is ignored, never honoured.
    """
    has_images = any(m.get("images") for m in messages)
    if any(m.get("audio") for m in messages):
        # /chat/completions transcribes them before this point (apps/audio/chat_input.py); other entries do not.
        raise AppError("input_audio parts are taken by /chat/completions only.", param="messages",
                       code="unsupported_content")
    if requested == AUTO:
        entries = {e.id: e for e in model_list(user=user, key=api_key).exclude(kind="embedding")}
        performance = {model_id: Performance(*figures)
                       for model_id, figures in model_performance(model_ids=list(entries)).items()}
        model_id, reason = choose_model(
            task=task_type(messages, has_images=has_images), candidates=[_candidate(e) for e in entries.values()],
            workers=workers, performance=performance, preferred=preferred_model_get(user=user))
        entry = entries[model_id]
    else:
        entry = model_get(user=user, key=api_key, model_id=requested or settings.AIHUB_DEFAULT_MODEL)
        model_check_use(entry=entry, use="chat")
        reason = "requested" if requested else "default model"
    if has_images and "vision" not in entry.capabilities:
        raise AppError(f"The model '{entry.id}' does not take images or video; use a vision model, or "
                       '"auto".', param="messages", code="model_not_supported")
    # An adapter runs on its base: follow the worker that holds the base.
    queue, worker, worker_reason = choose_worker(model_id=entry.base_model or entry.id,
                                                 bytes_by_device=entry.estimated_bytes_by_device(), workers=workers)
    return entry, Route(entry.id, queue, worker, f"model={entry.id} ({reason}); {worker_reason}")


def chat_completion_start(*, user, api_key, data: dict, instructions: str | None = None,
                          extra_params: dict | None = None) -> GenerationRequest:
    """chat_completion_create, after the request's retrieval search (if it asks for one).

    The search waits for the embedding worker, so it runs before the transaction opens, never inside it.
    Blocking: async callers use sync_to_async (a request thread, never the event loop).
    """
    found = retrieval_search(user=user, spec=data["retrieval"], messages=data["messages"]) \
        if data.get("retrieval") else None
    return chat_completion_create(user=user, api_key=api_key, data=data, instructions=instructions,
                                  extra_params=extra_params, retrieval_found=found)


@transaction.atomic
def chat_completion_create(*, user, api_key, data: dict, instructions: str | None = None,
                           extra_params: dict | None = None, retrieval_found=None) -> GenerationRequest:
    """Store the request (and its new messages) and enqueue it for a GPU worker.

    `data` is validated ChatCompletionRequestSerializer output. Nothing is
    stored when a check fails: the whole function is one transaction.
    `instructions` is a system message for this request only: the model sees
    it first, the conversation does not keep it (the Responses API's rule).
    `extra_params` are stored with the sampling parameters for the caller's
    own use (the Responses API keeps what its response object echoes).
    `retrieval_found` is (query, hits) of chat_completion_start's search: the
    hits that fit the context go into the prompt (apps/chat/retrieval.py).
    """
    requested = data.get("model")
    if requested is None and settings.AIHUB_DEFAULT_MODEL == AUTO:
        requested = AUTO
    model, route = chat_route(user=user, requested=requested, messages=data["messages"], workers=live_workers(),
                              api_key=api_key)
    max_tokens = max_tokens_for(model, requested=data.get("max_tokens"), default=settings.AIHUB_DEFAULT_MAX_TOKENS)

    vision_params_check(model=model, data=data)
    # Images and videos are checked and stored now, before anything else: a bad one stores nothing.
    messages = message_parts_store(user=user, messages=data["messages"])
    new_messages = [stored_message(m["role"], m["content"], m.get("tool_calls"), m.get("tool_call_id", ""),
                                   m.get("parts")) for m in messages]
    if data.get("conversation_id"):
        conversation = conversation_get(user=user, conversation_id=data["conversation_id"], for_update=True)
        history = [stored_message(*row) for row in
                   conversation.messages.values_list("role", "content", "tool_calls", "tool_call_id", "parts")]
    else:
        conversation, history = None, []
    tool_messages_check(history + new_messages, first_new=len(history))
    if instructions:
        history = [{"role": "system", "content": instructions}] + history
    # A prompt far beyond the context is refused here; the worker checks the exact token count.
    if estimate_prompt_tokens(history + new_messages) > 2 * model.context_length:
        raise AppError(f"The messages are far longer than the model '{model.id}' accepts "
                       f"({model.context_length} tokens).", param="messages", code="context_length_exceeded")
    params = {**_params(data, model=model, max_tokens=max_tokens, api_key=api_key), **(extra_params or {})}
    prompt = history + new_messages
    if retrieval_found is not None:
        query, hits = retrieval_found
        prompt, used = retrieval_prompt(prompt, hits=hits, budget_tokens=prompt_budget(
            prompt, context_length=model.context_length, max_tokens=max_tokens))
        params["retrieval"] = retrieval_record(query=query, spec=data["retrieval"], hits=hits, used=used)
    cached = None
    if cache_wanted(data.get("cache"), params):
        params["cache_key"] = cache_key(user_id=user.id, model=model.id, messages=prompt, params=params)
        cached = cache_get(params["cache_key"])
    if cached is None:
        queue_check()
    generation_id = uuid.uuid4()
    # A cache hit uses no GPU: it counts as a request, not against token limits.
    cost = 0 if cached else estimate_prompt_tokens(prompt) + params["n"] * max_tokens
    reservation = limits_admit(key=api_key, request_id=str(generation_id), cost=cost)
    try:
        params["limits"] = reservation
        generation = _store(generation_id, user=user, api_key=api_key, model=model, route=route, params=params,
                            conversation=conversation, prompt=prompt, new_messages=new_messages,
                            metadata=data.get("metadata") or {})
    except BaseException:
        limits_settle(reservation, used_tokens=0)  # the transaction rolls back: give the share back
        raise
    if cached:
        generation.cache_hit = True  # the row is updated once committed; the response says so now
        transaction.on_commit(lambda: _answer_from_cache(generation, cached, reservation))
    else:
        enqueue_on_commit(celeryconfig.GENERATE_TASK, args=[str(generation.id)], queue=route.queue)
    return generation


def vision_params_check(*, model: ModelEntry, data: dict) -> None:
    """A vision model answers through its processor's template, which renders no tools: refused by name."""
    if model.kind == "vision" and data.get("tools"):
        raise AppError(f"The vision model '{model.id}' does not take tools.", param="tools",
                       code="model_not_supported")


def max_tokens_for(model: ModelEntry, *, requested: int | None, default: int) -> int:
    """The request's max_tokens (or `default`, capped by the model), refused past what the model allows."""
    cap = model.max_completion_tokens or model.context_length - 1
    max_tokens = requested or min(default, cap)
    if max_tokens > cap:
        raise AppError(
            f"max_tokens is {max_tokens}, but the model '{model.id}' allows at most {cap} "
            f"(its context holds {model.context_length} tokens including the prompt).",
            param="max_tokens", code="context_length_exceeded")
    return max_tokens


def _params(data: dict, *, model, max_tokens: int, api_key) -> dict:
    """Sampling parameters as the engine takes them."""
    temperature, top_p = data.get("temperature"), data.get("top_p")
    keep_alive = data.get("keep_alive")
    # Pinning or unloading at once changes the hub for everyone: the same power as
    # POST /models/load and /models/unload. Other values are bounded by the serializer.
    if keep_alive in (-1, 0) and not api_key.has_scope(Scope.ADMIN):
        raise AppError(f"keep_alive {keep_alive:g} (pin or unload the model) needs an admin key; "
                       f"give seconds up to {settings.AIHUB_KEEP_ALIVE_MAX_SECONDS:g} instead.",
                       status=403, type="permission_error", param="keep_alive", code="insufficient_scope")
    return {
        "stream": bool(data.get("stream")),  # a client that waits for the whole answer: workers/generation.py
        "max_tokens": max_tokens,
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "stop": data.get("stop") or [],
        "seed": data.get("seed"),
        "ignore_eos": data.get("ignore_eos", False),
        "context_length": model.context_length,
        "keep_alive": keep_alive,
        **sampling_params(data, model=model),
        "constraint": data.get("response_format"),  # workers/constraints.py
        **tool_params(data),
    }


def _answer_from_cache(generation: GenerationRequest, cached: dict, reservation: dict) -> None:
    now = timezone.now()
    GenerationRequest.objects.filter(id=generation.id).update(
        state=GenerationRequest.State.SUCCEEDED, cache_hit=True, completion=cached["completion"],
        finish_reason=cached["finish_reason"], prompt_tokens=cached["prompt_tokens"],
        completion_tokens=cached["completion_tokens"], started_at=now, first_token_at=now, finished_at=now,
        queue_wait_ms=0, time_to_first_token_ms=0, total_ms=0, worker="cache")
    Message.objects.create(conversation_id=generation.conversation_id, role="assistant",
                           content=cached["completion"], generation_id=generation.id,
                           retrieval=retrieval_public(generation.params.get("retrieval")))
    message_embeddings_schedule(conversation_id=generation.conversation_id)
    limits_settle(reservation, used_tokens=0)
    request_metrics_record(generation=GenerationRequest.objects.get(id=generation.id))
    writer = EventWriter(generation.id)
    if cached["completion"]:
        writer.append(TOKEN, text=cached["completion"])
    writer.append(DONE, finish_reason=cached["finish_reason"], usage={
        "prompt_tokens": cached["prompt_tokens"], "completion_tokens": cached["completion_tokens"],
        "total_tokens": cached["prompt_tokens"] + cached["completion_tokens"]}, cache_hit=True)


def queue_check() -> None:
    """Bound the wait for a GPU: past AIHUB_MAX_QUEUE waiting requests, ask clients to come back later."""
    limit = settings.AIHUB_MAX_QUEUE
    if limit and GenerationRequest.objects.filter(state=GenerationRequest.State.QUEUED).count() >= limit:
        raise AppError(f"The hub has {limit} requests waiting for a GPU; retry shortly.", status=503,
                       type="server_error", code="queue_full", retry_after=settings.AIHUB_QUEUE_RETRY_AFTER_SECONDS)


def _store(generation_id, *, user, api_key, model, route, params, conversation, prompt,
           new_messages, metadata: dict) -> GenerationRequest:
    if conversation is None:
        conversation = Conversation.objects.create(user=user, model=model.id, title=_title_from(new_messages))
    else:
        conversation.model = model.id
        conversation.save(update_fields=["model", "updated_at"])
    # Their embeddings are scheduled when the request ends, answered or not (generation_settle: one task for the
    # user's messages and the answer), not now: a second task per request cost the default worker a run and the
    # inference worker an embedding job, beside the generations on the same device.
    Message.objects.bulk_create([Message(conversation=conversation, **m) for m in new_messages])

    return GenerationRequest.objects.create(
        id=generation_id,
        user=user,
        api_key=api_key,
        conversation=conversation,
        model=model.id,
        route=route.reason,
        prompt_messages=prompt,
        params=params,
        metadata=metadata,
    )


@transaction.atomic
def conversation_delete(*, user, conversation_id) -> None:
    """Delete the conversation and its messages; its requests stay as usage records without their text."""
    conversation = conversation_get(user=user, conversation_id=conversation_id, for_update=True)
    live = conversation.generations.filter(state__in=[GenerationRequest.State.QUEUED, GenerationRequest.State.RUNNING])
    for generation_id in live.values_list("id", flat=True):
        request_cancel_sync(generation_id)
    conversation.generations.update(prompt_messages=[], completion="")
    for generation in conversation.generations.filter(params__has_key="retrieval"):
        # The chunks' text and the query go with the conversation, as the prompt does; which chunks, stays.
        generation.params["retrieval"] = {**retrieval_public(generation.params["retrieval"]), "query": ""}
        generation.save(update_fields=["params"])
    image_ids = set().union(*(part_image_ids(parts) for parts in
                              conversation.messages.exclude(parts=None).values_list("parts", flat=True)))
    conversation.delete()
    stored_images_release(user=user, image_ids=image_ids)  # the ones no other conversation shows


def generation_fail(*, generation_id, error: dict, from_states: list[str], worker: str | None = None) -> bool:
    """End a live request with `error`, once: compare-and-set, the error event, a cancel, the limits settled.

    The one way a request fails from outside its generation (the web giving up,
    the sweeper, a worker finding its predecessor dead) and from inside it.
    `worker` narrows a `running` row to the process that claimed it. Returns
    whether this call ended it; a request already final is left as it is.
    """
    rows = GenerationRequest.objects.filter(id=generation_id, state__in=from_states)
    if worker is not None:
        rows = rows.filter(worker=worker)
    if not rows.update(state=GenerationRequest.State.FAILED, error=error, finished_at=timezone.now()):
        return False
    # A worker still generating it stops at its next token; its own final write then changes nothing.
    request_cancel_sync(generation_id)
    EventWriter.continuing(generation_id).append(ERROR, error=error)
    generation_settle(generation_id=generation_id)
    return True


def generation_settle(*, generation_id) -> None:
    """Give back a final request's concurrency slot and unused token reservation, count it in /metrics, and
    have its conversation's new messages (its user turn, its answer if any) embedded.

    Each happens once per request however often this runs (limits_settle is idempotent, and the metrics guard
    says which call counted it). Every end of a request comes here, after its `done` or `error` event: the
    worker's (answered, cancelled, failed) and the web's or the sweeper's (generation_fail).
    """
    generation = GenerationRequest.objects.filter(id=generation_id).first()
    if generation is not None and generation.is_finished:
        limits_settle(generation.params.get("limits"),
                      used_tokens=generation.prompt_tokens + generation.completion_tokens)
        if request_metrics_record(generation=generation):
            message_embeddings_schedule(conversation_id=generation.conversation_id)


def generation_give_up(*, generation_id, error: dict) -> bool:
    """The web stopped waiting (its 504): no worker may answer this request later, for nobody."""
    return generation_fail(generation_id=generation_id, error=error,
                           from_states=[GenerationRequest.State.QUEUED, GenerationRequest.State.RUNNING])


def generation_publish(*, generation_id) -> None:
    """Send a queued request's message again (its first was lost, or its worker died before answering).

    To the shared queue, not the route's worker queue: that worker may be the one that is gone. A
    duplicate message is harmless, the claim is a compare-and-set (workers/generation.py).
    """
    send_task(celeryconfig.GENERATE_TASK, args=[str(generation_id)], queue=celeryconfig.INFERENCE_QUEUE)
