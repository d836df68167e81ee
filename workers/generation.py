"""The body of a chat completion task: claim the row, generate, store, announce.

The request row's state is the single source of truth. A message is acted on
only if it moves the row from `queued` to `running` (compare-and-set); a
redelivered message that finds the row `running` means the worker that held
it died mid-generation, so the request is failed, never answered twice.
"""
from __future__ import annotations

import logging
import time

from django.db import transaction
from django.utils import timezone

from apps.accounts.limits import limits_settle
from apps.catalog.models import ModelEntry
from apps.chat.cache import cache_put
from apps.chat.models import Conversation, GenerationRequest, Message
from apps.core import events
from apps.monitoring.counters import request_metrics_record

logger = logging.getLogger(__name__)
State = GenerationRequest.State


def _ms(start, end) -> float | None:
    return round((end - start).total_seconds() * 1000, 2) if start and end else None


def _fail(generation_id, writer: events.EventWriter, error: dict, *, from_state: str) -> None:
    now = timezone.now()
    changed = GenerationRequest.objects.filter(id=generation_id, state=from_state).update(
        state=State.FAILED, error=error, finished_at=now)
    if changed:
        writer.append(events.ERROR, error=error)


def handle_redelivery(generation_id) -> None:
    generation = GenerationRequest.objects.filter(id=generation_id).first()
    if generation is None or generation.is_finished:
        logger.info("ignoring message for %s: %s", generation_id, generation and generation.state)
        return
    if generation.state == State.RUNNING:
        logger.warning("request %s was running on %s when its worker was lost; failing it",
                       generation_id, generation.worker)
        _fail(generation_id, events.EventWriter.continuing(generation_id), {
            "message": "The worker running this request stopped unexpectedly; retry the request.",
            "type": "server_error", "param": None, "code": "worker_lost"}, from_state=State.RUNNING)


def run_generation(generation_id: str, *, worker: str) -> None:
    try:
        _run_generation(generation_id, worker=worker)
    except Exception:
        # Whatever broke (storing the answer included), the request must end, or its client waits forever.
        logger.exception("request %s failed", generation_id)
        _fail(generation_id, events.EventWriter.continuing(generation_id), {
            "message": "The request failed on the worker; see the worker log.", "type": "server_error",
            "param": None, "code": "generation_failed"}, from_state=State.RUNNING)
    finally:
        settle_limits(generation_id)


def settle_limits(generation_id) -> None:
    """Give back the request's concurrency slot and unused token reservation once it is final."""
    generation = GenerationRequest.objects.filter(id=generation_id).first()
    if generation is not None and generation.is_finished:
        limits_settle(generation.params.get("limits"),
                      used_tokens=generation.prompt_tokens + generation.completion_tokens)
        request_metrics_record(generation=generation)


def _run_generation(generation_id: str, *, worker: str) -> None:
    started_at = timezone.now()
    claimed = GenerationRequest.objects.filter(id=generation_id, state=State.QUEUED).update(
        state=State.RUNNING, started_at=started_at, worker=worker)
    if not claimed:
        handle_redelivery(generation_id)
        return

    generation = GenerationRequest.objects.get(id=generation_id)
    writer = events.EventWriter(generation_id)
    stop_signal = events.StopSignal(generation_id)
    if stop_signal():  # the client left while the request waited in the queue
        _finish_cancelled(generation, writer, text="", completion_tokens=0, prompt_tokens=0)
        return

    from .engine import GenerationError, active_adapter, attach_adapter, generate
    from .model_manager import InsufficientMemory, ModelSpec, get_manager

    first_token_at = None

    def on_text(text: str) -> None:
        nonlocal first_token_at
        if first_token_at is None:
            first_token_at = timezone.now()
        writer.append(events.TOKEN, text=text)

    manager = get_manager()
    manager.current_task = str(generation_id)
    try:
        entry = ModelEntry.objects.get(id=generation.model)
        # A fine-tuned model is its base plus an adapter: the base stays loaded once for all its adapters.
        base = ModelEntry.objects.get(id=entry.base_model) if entry.adapter_path else entry
        with manager.use(ModelSpec.from_entry(base), keep_alive=generation.params.get("keep_alive")) as loaded:
            if entry.adapter_path:
                attach_adapter(loaded, entry.id, entry.adapter_path)
            tic = time.perf_counter()
            with active_adapter(loaded, entry.id if entry.adapter_path else None):
                result = generate(loaded, messages=generation.prompt_messages, params=generation.params,
                                  on_text=on_text, should_stop=stop_signal)
        logger.info("request %s: %d tokens in %.3fs (%s)", generation_id, result.completion_tokens,
                    time.perf_counter() - tic, result.finish_reason)
    except (GenerationError, InsufficientMemory) as exc:
        _fail(generation_id, writer, exc.error, from_state=State.RUNNING)
        return
    except ModelEntry.DoesNotExist:
        _fail(generation_id, writer, {"message": f"The model '{generation.model}' was removed.",
                                      "type": "invalid_request_error", "param": "model",
                                      "code": "model_not_found"}, from_state=State.RUNNING)
        return
    except Exception as exc:
        if _is_out_of_memory(exc):
            # The model's cache is freed and the worker keeps serving; the request fails clearly.
            logger.error("request %s ran out of device memory", generation_id)
            manager.free_after_oom()
            _fail(generation_id, writer, {
                "message": "The device ran out of memory during generation; retry with fewer tokens.",
                "type": "server_error", "param": None, "code": "insufficient_memory"}, from_state=State.RUNNING)
            return
        logger.exception("request %s failed", generation_id)
        _fail(generation_id, writer, {"message": "The model failed while generating; see the worker log.",
                                      "type": "server_error", "param": None, "code": "generation_failed"},
              from_state=State.RUNNING)
        return
    finally:
        manager.current_task = None

    if result.finish_reason == "cancelled":
        _finish_cancelled(generation, writer, text=result.text, completion_tokens=result.completion_tokens,
                          prompt_tokens=result.prompt_tokens, first_token_at=first_token_at)
        return

    finished_at = timezone.now()
    with transaction.atomic():
        # CAS again: the conversation may have been deleted meanwhile.
        changed = GenerationRequest.objects.filter(id=generation_id, state=State.RUNNING).update(
            state=State.SUCCEEDED,
            completion=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            first_token_at=first_token_at,
            finished_at=finished_at,
            queue_wait_ms=_ms(generation.created_at, started_at),
            time_to_first_token_ms=_ms(generation.created_at, first_token_at),
            total_ms=_ms(generation.created_at, finished_at),
        )
        if changed:
            Message.objects.create(conversation_id=generation.conversation_id, role="assistant",
                                   content=result.text, generation_id=generation.id)
            Conversation.objects.filter(id=generation.conversation_id).update(updated_at=finished_at)
    if changed and generation.params.get("cache_key"):
        cache_put(generation.params["cache_key"], completion=result.text, finish_reason=result.finish_reason,
                  prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
    if changed:
        # Announced only after the commit: a reader that sees `done` finds the row final.
        writer.append(events.DONE, finish_reason=result.finish_reason, usage={
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens})


def _is_out_of_memory(exc: Exception) -> bool:
    import torch

    message = str(exc).lower()
    return (isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in message
            or "can't allocate memory" in message)  # the CPU allocator's wording


def _finish_cancelled(generation, writer, *, text: str, completion_tokens: int, prompt_tokens: int,
                      first_token_at=None) -> None:
    # A cancelled answer is kept on the request row for the record, not added to the conversation.
    changed = GenerationRequest.objects.filter(id=generation.id, state=State.RUNNING).update(
        state=State.CANCELLED, completion=text, finish_reason="cancelled", prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, first_token_at=first_token_at, finished_at=timezone.now())
    if changed:
        writer.append(events.DONE, finish_reason="cancelled", usage={
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens})


def fail_orphaned_requests(nodename: str) -> int:
    """At worker start: requests this worker node was running when it died can never finish."""
    count = 0
    for generation_id in GenerationRequest.objects.filter(
            state=State.RUNNING, worker__startswith=f"{nodename}:").values_list("id", flat=True):
        handle_redelivery(generation_id)
        settle_limits(generation_id)
        count += 1
    return count
