"""The body of a chat completion task: claim the row, generate, store, announce.

Exactly one answer per request. The request row's state is the single source
of truth, and every change of it is a compare-and-set:

- A message is acted on only if it moves the row from `queued` to `running`
  (the claim, which counts an attempt and records the process as `worker`).
  Only that process may then end it: its final writes name it.
- A row found `running` whose worker process is gone (a redelivered message,
  the sweeper, the worker's own restart) is recovered here, in `recover`:
  if no event of it reached the log (nothing was streamed: no token, so no
  reader saw anything), it goes back to `queued` and runs again, transparently;
  if tokens were streamed, it fails with `worker_lost`, so no token is ever
  sent twice. After AIHUB_TASK_MAX_ATTEMPTS starts it fails with
  `too_many_attempts` instead: a request that kills its worker never loops.
- A row found `running` on a live process is a duplicate message: ignored.
- A final row is final: a message for it is ignored, and a reader that gave up
  (its 504) or the sweeper fails a row first, so no worker answers it later.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from apps.catalog.models import ModelEntry
from apps.catalog.worker_registry import process_alive
from apps.chat.cache import cache_put
from apps.chat.models import Conversation, GenerationRequest, Message
from apps.chat.retrieval import retrieval_public
from apps.chat.services import generation_fail, generation_publish, generation_settle
from apps.core import events
from apps.core.db import retry_on_lost_connection
from apps.core.errors import error_object
from apps.core.redis import sync_client

from .tool_calls import Content, parser_for

logger = logging.getLogger(__name__)
State = GenerationRequest.State

IGNORED, BUSY, REQUEUED, FAILED = "ignored", "busy", "requeued", "failed"
# A request whose client does not stream (a REST client waiting for the whole answer) has its text written to
# the event log at most this often, not once per token: each event is a Valkey write here and a read by the
# web, CPU that a small machine takes from the model's steps. The events stay, in fewer pieces: a websocket
# may still resume the request and read them.
HELD_TEXT_SECONDS = 0.25


def _ms(start, end) -> float | None:
    return round((end - start).total_seconds() * 1000, 2) if start and end else None


def _error(message: str, code: str, *, type: str = "server_error", param: str | None = None) -> dict:
    return error_object(message, type=type, param=param, code=code)


@retry_on_lost_connection
def _fail(generation_id, error: dict, *, worker: str) -> None:
    generation_fail(generation_id=generation_id, error=error, from_states=[State.RUNNING], worker=worker)


# The requests this process is running now: its task threads share one `worker` name (hostname:pid).
_in_flight: set[str] = set()
_in_flight_lock = threading.Lock()


def _process_gone(worker: str, *, here: str | None, generation_id) -> bool:
    """Is the process that claimed a row gone? Exact for this node's own processes, else by heartbeat."""
    nodename, _, pid = worker.rpartition(":")
    if here is not None and here.rpartition(":")[0] == nodename:
        if worker == here:
            with _in_flight_lock:  # this very process claimed it: gone unless one of its threads runs it now
                return str(generation_id) not in _in_flight
        return not _pid_running(pid)
    return not process_alive(worker)


def _pid_running(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:  # a killed pool process the worker has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def recover(generation_id, *, here: str | None = None, worker_gone: bool = False) -> str:
    """A message (or the sweeper) found the row not `queued`: decide what it means. See the module docstring.

    `here` is the calling worker process (hostname:pid); `worker_gone` says the
    caller already knows the row's worker is dead. Returns IGNORED, BUSY,
    REQUEUED (the caller runs or re-publishes it) or FAILED.
    """
    generation = GenerationRequest.objects.filter(id=generation_id).only(
        "state", "worker", "attempts", "first_token_at").first()
    if generation is None or generation.is_finished:
        logger.info("ignoring message for %s: %s", generation_id, generation and generation.state)
        return IGNORED
    if generation.state == State.QUEUED:
        return REQUEUED
    if not worker_gone and not _process_gone(generation.worker, here=here, generation_id=generation_id):
        logger.info("request %s is running on %s; ignoring a duplicate message", generation_id, generation.worker)
        return BUSY
    if generation.first_token_at or sync_client().xlen(events.events_key(generation_id)):
        logger.warning("request %s was running on %s when its worker was lost; failing it",
                       generation_id, generation.worker)
        _fail(generation_id, _error("The worker running this request stopped unexpectedly after it had "
                                    "started answering; retry the request.", "worker_lost"),
              worker=generation.worker)
        return FAILED
    if generation.attempts >= settings.AIHUB_TASK_MAX_ATTEMPTS:
        logger.warning("request %s lost its worker %d times; failing it", generation_id, generation.attempts)
        _fail(generation_id, _error(f"The request was started {generation.attempts} times and its worker "
                                    "stopped each time; it will not be tried again.", "too_many_attempts"),
              worker=generation.worker)
        return FAILED
    # Nothing reached any reader: run it again, on whichever worker takes it.
    requeued = GenerationRequest.objects.filter(id=generation_id, state=State.RUNNING, worker=generation.worker).update(
        state=State.QUEUED, worker="", started_at=None, queued_at=timezone.now())
    if requeued:
        logger.warning("request %s lost its worker %s before its first token; running it again "
                       "(%d attempt(s) so far)", generation_id, generation.worker, generation.attempts)
    return REQUEUED if requeued else IGNORED


def run_generation(generation_id: str, *, worker: str) -> None:
    started_at = None
    try:
        started_at = _claim(generation_id, worker=worker)
        if started_at is not None:
            _run_generation(generation_id, started_at=started_at, worker=worker)
    except Exception:
        # Whatever broke (storing the answer included), the request must end, or its client waits forever.
        logger.exception("request %s failed", generation_id)
        _fail(generation_id, _error("The request failed on the worker; see the worker log.", "generation_failed"),
              worker=worker)
    finally:
        if started_at is not None:
            with _in_flight_lock:
                _in_flight.discard(str(generation_id))
        retry_on_lost_connection(generation_settle)(generation_id=generation_id)


@retry_on_lost_connection
def _claim(generation_id, *, worker: str):
    """queued -> running by this process, counting the attempt; a row in any other state goes to `recover`.

    The claim and the in-flight entry are one step (under the lock), so a duplicate message taken by another
    thread of this process never sees the row as ours but not running.
    """
    for _ in range(2):
        started_at = timezone.now()
        with _in_flight_lock:
            if GenerationRequest.objects.filter(id=generation_id, state=State.QUEUED).update(
                    state=State.RUNNING, started_at=started_at, worker=worker, attempts=F("attempts") + 1):
                _in_flight.add(str(generation_id))
                return started_at
        # A redelivered message whose row went back to the queue is this message's to run now.
        if recover(generation_id, here=worker) != REQUEUED:
            return None
    return None


def _run_generation(generation_id: str, *, started_at, worker: str) -> None:
    with events.StopSignal(generation_id) as stop_signal:
        _generate(generation_id, stop_signal, started_at=started_at, worker=worker)


def _generate(generation_id: str, stop_signal, *, started_at, worker: str) -> None:
    generation = GenerationRequest.objects.select_related("user", "api_key__user").get(id=generation_id)
    writer = events.EventWriter(generation_id)
    if stop_signal():  # the client left while the request waited in the queue
        _finish_cancelled(generation, writer, text="", completion_tokens=0, prompt_tokens=0, worker=worker)
        return
    refusal = _no_longer_allowed(generation)
    if refusal:
        _fail(generation_id, refusal, worker=worker)
        return

    from .choices import request_result
    from .engine import attach_adapter
    from .model_manager import InsufficientMemory, ModelSpec, get_manager
    from .sequence import Sequence

    manager = get_manager()
    try:
        entry = ModelEntry.objects.get(id=generation.model)
        # A fine-tuned model is its base plus an adapter: the base stays loaded once for all its adapters,
        # and their requests share its batch.
        base = ModelEntry.objects.get(id=entry.base_model) if entry.adapter_path else entry
        with manager.use(ModelSpec.from_entry(base), keep_alive=generation.params.get("keep_alive")) as loaded:
            if entry.adapter_path:
                attach_adapter(loaded, entry.id, entry.adapter_path)
            vision, refusal = _vision_prompt(loaded, generation.prompt_messages)
            if refusal is not None:
                _fail(generation_id, refusal, worker=worker)
                return
            # One sequence per choice (`n`), sharing one outbox; the engine prefills their prompt once.
            outbox = queue.SimpleQueue()
            sequences = [Sequence(request_id=str(generation_id), messages=generation.prompt_messages,
                                  params=generation.params, adapter=entry.id if entry.adapter_path else None,
                                  time_limit=settings.AIHUB_GENERATION_TIME_LIMIT_SECONDS or None, index=index,
                                  outbox=outbox)
                         for index in range(generation.params.get("n") or 1)]
            for sequence in sequences:
                sequence.vision = vision
            # Each choice reads its own tool calls out of its text (None without tools).
            parsers = [parser_for(generation.params, loaded.tokenizer.chat_template) for _ in sequences]
            tic = time.perf_counter()
            for sequence in sequences:
                manager.engine.submit(loaded, sequence)
            # The connection goes back to the pool while the engine works (seconds to minutes): a thread that
            # only relays text holds none, so the pool serves a worker's many threads (settings.py).
            connection.close()
            results, logprobs, error, first_token_at = _follow(sequences, outbox, manager.engine, writer,
                                                               stop_signal, params=generation.params,
                                                               parsers=parsers)
    except InsufficientMemory as exc:
        _fail(generation_id, exc.error, worker=worker)
        return
    except ModelEntry.DoesNotExist:
        _fail(generation_id, _error(f"The model '{generation.model}' was removed.", "model_not_found",
                                    type="invalid_request_error", param="model"), worker=worker)
        return
    if error is not None:
        _fail(generation_id, error, worker=worker)
        return
    result = request_result(results, logprobs, params=generation.params, parsers=parsers)
    logger.info("request %s: %d tokens in %.3fs (%s)", generation_id, result.completion_tokens,
                time.perf_counter() - tic, result.finish_reason)

    if result.finish_reason == "cancelled":
        _finish_cancelled(generation, writer, text=result.text, completion_tokens=result.completion_tokens,
                          prompt_tokens=result.prompt_tokens, first_token_at=first_token_at, worker=worker)
        return

    changed = _store_answer(generation, result, worker=worker, started_at=started_at, first_token_at=first_token_at)
    if changed and generation.params.get("cache_key"):
        cache_put(generation.params["cache_key"], completion=result.text, finish_reason=result.finish_reason,
                  prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
    if changed:
        # Announced only after the commit: a reader that sees `done` finds the row final.
        extra = {"choices": [{"index": c["index"], "finish_reason": c["finish_reason"]}
                             for c in result.output["choices"]]} if len(results) > 1 else {}
        writer.append(events.DONE, finish_reason=result.finish_reason, usage={
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}, **extra)


def _vision_prompt(loaded, messages: list[dict]):
    """(VisionPrompt, None) for a vision model, (None, None) for a text model, (None, error) if the prompt
    cannot be made (its images were deleted meanwhile, a template that cannot render them)."""
    if loaded.processor is None:
        if any(message.get("parts") for message in messages):
            return None, _error(f"The model '{loaded.model_id}' does not take images or video.",
                                "model_not_supported", type="invalid_request_error", param="messages")
        return None, None
    from .vision import vision_prompt

    try:
        return vision_prompt(loaded, messages), None
    except Exception as exc:  # noqa: BLE001 - this request's images or template, not the worker
        logger.warning("vision prompt of %s failed: %s", loaded.model_id, exc)
        return None, _error(f"The model '{loaded.model_id}' cannot take these messages: {exc}", "invalid_messages",
                            type="invalid_request_error", param="messages")


def _follow(sequences, outbox, engine, writer, stop_signal, *, params: dict, parsers: list):
    """The task thread's side of a request in the engine: write its choices' text as events, pass on a cancel.

    Returns (results, logprobs, None, first_token_at), one result and one list of logprob entries per choice,
    or (None, None, error, first_token_at) when a choice failed: a failure, like a cancel, ends every choice.
    Text that piled up while this thread wrote the last event goes out as one event per choice, so a slow
    Redis round trip never holds up the engine, only makes the chunks larger. With tools, a choice's text
    goes through its tool-call parser first: content goes out as `token` events, calls as `tool_call` events.
    """
    from .sequence import DONE, TEXT

    # A cancel, or a reader gone, reaches the engine from the process's stop watcher (events.StopSignal); this
    # thread then hears of it as its choices' `done` (finish_reason cancelled), so it only ever waits on the outbox.
    stop_signal.on_stop(lambda: _cancel_all(engine, sequences))
    results = [None] * len(sequences)
    finished: set[int] = set()  # choices whose tool-call parser was told the text ended
    logprobs: list[list[dict]] = [[] for _ in sequences]
    first_token_at = None
    # Text nobody streams is held back (HELD_TEXT_SECONDS); `stream` is missing from rows queued before it
    # was recorded, which are streamed as before.
    hold = 0.0 if params.get("stream", True) else HELD_TEXT_SECONDS
    texts: dict[int, tuple[list[str], list[dict]]] = {}  # text not written yet, per choice
    written_at = time.monotonic()
    try:
        while True:
            items = [outbox.get()]
            while True:
                try:
                    items.append(outbox.get_nowait())
                except queue.Empty:
                    break
            error = None
            for kind, index, value in items:
                if kind == TEXT:
                    if first_token_at is None:
                        first_token_at = timezone.now()
                    text, entries = value
                    pending = texts.setdefault(index, ([], []))
                    pending[0].append(text)
                    pending[1].extend(entries or [])
                elif kind == DONE:
                    results[index] = value
                else:
                    error = error or value
            ended = error is not None or any(result is not None for result in results)
            if texts and (ended or time.monotonic() - written_at >= hold):
                for index, (text_parts, entries) in texts.items():
                    logprobs[index].extend(entries)
                    text = "".join(text_parts)
                    pieces = parsers[index].feed(text) if parsers[index] else [Content(text)]
                    _write_answer(writer, pieces, index, entries, params)
                texts, written_at = {}, time.monotonic()
            for index, result in enumerate(results):
                if result is None or index in finished:
                    continue
                finished.add(index)
                if parsers[index] and result.finish_reason != "cancelled":
                    _write_answer(writer, parsers[index].finish(), index, [], params)
            if error is not None:
                _cancel_all(engine, sequences)
                return None, None, error, first_token_at
            if all(result is not None for result in results):
                return results, logprobs, None, first_token_at
    except BaseException:
        _cancel_all(engine, sequences)  # this thread cannot go on (Redis gone for good, a shutdown): free the rows
        raise


def _write_answer(writer, pieces: list, index: int, entries: list[dict], params: dict) -> None:
    """A choice's text as events (docs/streaming.md): `token` events for content, `tool_call` events for calls.

    `index` names the choice when n > 1; the text's logprob entries ride on its first content event (with tools,
    content held back while a call might be starting carries none: the stored answer keeps them all).
    """
    many = (params.get("n") or 1) > 1
    for piece in pieces:
        if isinstance(piece, Content):
            event = {"text": piece.text, **({"index": index} if many else {})}
            if params.get("logprobs"):
                event["logprobs"], entries = entries, []
            writer.append(events.TOKEN, **event)
        elif piece.fragment:  # a piece of a streaming call's arguments
            writer.append(events.TOOL_CALL, index=index, tool_index=piece.index, arguments=piece.fragment)
        else:  # a whole call, or a streaming call's first event (fragment "")
            call = piece.call
            writer.append(events.TOOL_CALL, index=index, tool_index=piece.index, id=call.id, name=call.name,
                          arguments=call.arguments if piece.fragment is None else "")


def _cancel_all(engine, sequences) -> None:
    for sequence in sequences:
        if not sequence.cancelled:
            engine.cancel(sequence)


def _no_longer_allowed(generation) -> dict | None:
    """What changed while the request waited in the queue, if it may no longer run: its key stopped
    (revoked in the instant it was admitted, expired, its user deactivated), or its model went private."""
    from apps.accounts.services import api_key_still_usable
    from apps.catalog.selectors import model_list

    key = generation.api_key
    if key is not None and not api_key_still_usable(key_id=key.id):
        return _error("The API key of this request was revoked or has expired, or its user was deactivated, "
                      "before a worker took it.", "invalid_api_key", type="authentication_error")
    if not model_list(user=generation.user, key=key).filter(id=generation.model).exists():
        return _error(f"The model '{generation.model}' does not exist.", "model_not_found",
                      type="invalid_request_error", param="model")
    return None


@retry_on_lost_connection
def _store_answer(generation, result, *, worker: str, started_at, first_token_at) -> bool:
    """Store the answer, once; True when this call (or a try of it whose reply the database lost) stored it."""
    finished_at = timezone.now()
    with transaction.atomic():
        # CAS again: the web may have given up on it meanwhile, or its conversation been deleted.
        changed = GenerationRequest.objects.filter(id=generation.id, state=State.RUNNING, worker=worker).update(
            state=State.SUCCEEDED,
            completion=result.text,
            output=result.output,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            first_token_at=first_token_at,
            finished_at=finished_at,
            queue_wait_ms=_ms(generation.created_at, started_at),
            time_to_first_token_ms=_ms(generation.created_at, first_token_at),
            total_ms=_ms(generation.created_at, finished_at),
        )
        if changed and generation.conversation_id:  # a raw-prompt completion (/completions) has no conversation
            Message.objects.create(conversation_id=generation.conversation_id, role="assistant",
                                   content=result.text, tool_calls=result.tool_calls, generation_id=generation.id,
                                   retrieval=retrieval_public(generation.params.get("retrieval")))
            Conversation.objects.filter(id=generation.conversation_id).update(updated_at=finished_at)
    # A retry after a commit whose reply was lost finds the row already ours: it still has to be announced.
    return bool(changed) or GenerationRequest.objects.filter(
        id=generation.id, state=State.SUCCEEDED, worker=worker).exists()


@retry_on_lost_connection
def _finish_cancelled(generation, writer, *, text: str, completion_tokens: int, prompt_tokens: int,
                      worker: str, first_token_at=None) -> None:
    # A cancelled answer is kept on the request row for the record, not added to the conversation.
    changed = GenerationRequest.objects.filter(id=generation.id, state=State.RUNNING, worker=worker).update(
        state=State.CANCELLED, completion=text, finish_reason="cancelled", prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, first_token_at=first_token_at, finished_at=timezone.now())
    if changed:
        writer.append(events.DONE, finish_reason="cancelled", usage={
            "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens})


def recover_lost(generation_id) -> bool:
    """A running row whose worker is known to be gone: run it again (re-published) or fail it; True if either."""
    outcome = recover(generation_id, worker_gone=True)
    if outcome == REQUEUED:
        generation_publish(generation_id=generation_id)
    return outcome in (REQUEUED, FAILED)


def recover_orphaned_requests(nodename: str, *, started_before) -> int:
    """At worker start: requests this node claimed before it (re)started lost their process with it.

    By claim time, not by pid: in a container the new worker process may well get the pid of the old one.
    Requests still queued from before are published again too: the previous run may have taken their
    messages from the broker without claiming them yet (it prefetches one per task thread), or lost them
    with a broker restart; those would otherwise wait for the sweeper's AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS.
    A duplicate message is harmless (the claim is a compare-and-set).
    """
    from .sweeper import republish_unclaimed

    recovered = sum(recover_lost(generation_id) for generation_id in GenerationRequest.objects.filter(
        state=State.RUNNING, worker__startswith=f"{nodename}:", started_at__lt=started_before).values_list(
        "id", flat=True))
    return recovered + republish_unclaimed(queued_before=started_before, batch=settings.AIHUB_SWEEP_BATCH)
