"""A command to one worker and its reply: publish it on the worker's own queue, wait for the answer.

The reply travels through an event log (apps/core/events.py) named by a reply id: the worker appends one
final event, `done` with its result or `error` with the API's error object. Callers:
- the web's load and unload (apps/catalog/load_unload.py) wait asynchronously, `command`;
- the training worker making room on its device (workers/training.py) waits synchronously, `command_sync`;
- the adapter detach after a fine-tuned model's deletion (apps/catalog/services.py) only sends, `command_send`;
- the worker side (workers/model_commands.py) answers with `reply_done` or `reply_error`.

Embedding jobs (apps/embeddings) are answered the same way and waited for with `reply_wait`, but they are
not sent as commands: a job goes to a Redis list served by the worker's embedding threads, not as a Celery
task, because an inference worker's Celery threads may all be held by generations (apps/embeddings/jobs.py).
"""
from __future__ import annotations

import uuid

import celeryconfig

from . import events
from .errors import AppError, app_error_from_event
from .publishing import send_task

REPLY_PREFIX = "control-"


def command_send(action: str, *, queue: str, model_id: str = "", options: dict | None = None) -> str:
    """Publish a command to the worker that consumes `queue`; returns the reply id to wait on."""
    reply_id = f"{REPLY_PREFIX}{uuid.uuid4().hex}"
    send_task(celeryconfig.MODEL_COMMAND_TASK, args=[action, model_id, reply_id, options or {}], queue=queue)
    return reply_id


def _result(event: dict) -> dict:
    if event["type"] == events.ERROR:
        raise app_error_from_event(event["error"])
    return {k: v for k, v in event.items() if k not in ("type", "seq")}


def _no_answer() -> AppError:
    return AppError("The worker did not answer.", status=504, type="server_error", code="timeout")


async def reply_wait(reply_id: str, *, timeout: float) -> dict:
    """The reply's result (the `done` event without `type` and `seq`), or its error raised as an AppError.

    `timeout` is an idle timeout: the reader ends with a `timeout` error (504) when nothing arrives for so long.
    """
    async for event in events.read_events(reply_id, idle_timeout=timeout):
        if event["type"] in events.FINAL_TYPES:
            return _result(event)
    raise _no_answer()


def reply_wait_sync(reply_id: str, *, timeout: float) -> dict:
    """As `reply_wait`, blocking (for worker code, which has no event loop)."""
    event = events.wait_final_sync(reply_id, timeout=timeout)
    if event is None:
        raise _no_answer()
    return _result(event)


async def command(action: str, *, queue: str, timeout: float, model_id: str = "", options: dict | None = None) -> dict:
    return await reply_wait(command_send(action, queue=queue, model_id=model_id, options=options), timeout=timeout)


def command_sync(action: str, *, queue: str, timeout: float, model_id: str = "", options: dict | None = None) -> dict:
    return reply_wait_sync(command_send(action, queue=queue, model_id=model_id, options=options), timeout=timeout)


def reply_done(reply_id: str, **result) -> None:
    """Worker side: the command succeeded; `result` is what the waiter gets."""
    events.EventWriter(reply_id).append(events.DONE, **result)


def reply_error(reply_id: str, error: dict) -> None:
    """Worker side: the command failed; `error` is the API's error object (error_object), raised at the waiter."""
    events.EventWriter(reply_id).append(events.ERROR, error=error)

