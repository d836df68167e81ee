"""The per-request event log: a Redis stream whose entry ids are the sequence numbers.

The worker appends `token` events and one final `done` or `error`; readers
(the SSE view, the websocket consumer, the non-streaming view) read from any
sequence number onwards, so a late or reconnecting reader gets every event it
missed, in order, exactly once. Entry ids are `0-<seq>`: the stream itself
enforces that sequence numbers only grow, and "resume after N" is a plain
XREAD from `0-N`. See docs/streaming.md.

Stopping is cooperative: readers set a cancel flag, or hold a deadline that the
worker enforces; one thread per worker process polls both for all its requests
(StopSignal).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable

import redis
from django.conf import settings

from .errors import AppError, error_object
from .redis import async_client, sync_client

logger = logging.getLogger(__name__)

TOKEN = "token"
TOOL_CALL = "tool_call"  # {"index": choice, "tool_index", "id"?, "name"?, "arguments"}: docs/streaming.md
DONE = "done"
ERROR = "error"
FINAL_TYPES = frozenset({DONE, ERROR})


def events_key(request_id) -> str:
    return f"aihub:stream:{request_id}:events"


def cancel_key(request_id) -> str:
    return f"aihub:gen:{request_id}:cancel"


def deadline_key(request_id) -> str:
    """Epoch seconds after which the worker stops unless a reader pushes it forward (a lease)."""
    return f"aihub:gen:{request_id}:reader_deadline"


def _ttl() -> int:
    return settings.AIHUB_EVENT_LOG_TTL_SECONDS


class EventWriter:
    """Worker side: appends events with consecutive sequence numbers."""

    def __init__(self, request_id, *, start_after: int = 0):
        self.key = events_key(request_id)
        self.seq = start_after
        self.client = sync_client()

    @classmethod
    def continuing(cls, request_id) -> "EventWriter":
        """A writer that follows whatever an earlier (lost) worker already wrote."""
        last = sync_client().xrevrange(events_key(request_id), count=1)
        start = int(last[0][0].split("-")[1]) if last else 0
        return cls(request_id, start_after=start)

    def append(self, type: str, **data) -> int:
        self.seq += 1
        payload = json.dumps({"type": type, **data}, separators=(",", ":"))
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.key, {"e": payload}, id=f"0-{self.seq}")
        pipe.expire(self.key, _ttl())
        try:
            pipe.execute()
        except redis.ResponseError as exc:
            # The client retries across a lost connection (apps/core/redis.py); when the first try
            # had reached the server, the event is already in the stream under this very id.
            if "equal or smaller" not in str(exc):
                raise
        return self.seq


def _decode(entry_id: str, fields: dict) -> dict:
    event = json.loads(fields["e"])
    event["seq"] = int(entry_id.split("-")[1])
    return event


async def read_events(request_id, *, after_seq: int = 0, idle_timeout: float | None = None,
                      lease_seconds: float | None = None) -> AsyncIterator[dict]:
    """Yield events after `after_seq` until the final one.

    Ends with a synthetic `error` event (code `timeout`) when nothing arrives for
    `idle_timeout` seconds, so a reader never hangs on a request that no worker takes.

    With `lease_seconds`, the reader holds a lease on the request while it reads:
    if it stops reading (its client went away and the server dropped the
    response, however that happened) the lease runs out and the worker stops.
    That does not rely on the server running any cleanup code of ours on
    disconnect, which Django does not guarantee for a streaming response.
    """
    if idle_timeout is None:
        idle_timeout = settings.AIHUB_REQUEST_TIMEOUT_SECONDS
    client = async_client()
    key = events_key(request_id)
    last_id = f"0-{after_seq}"
    last_event_at = time.monotonic()
    renewed_at = 0.0
    block_ms = int(lease_seconds * 250) if lease_seconds else 1000
    while True:
        if lease_seconds and time.monotonic() - renewed_at > lease_seconds / 4:
            await set_reader_deadline(request_id, lease_seconds)
            renewed_at = time.monotonic()
        response = await client.xread({key: last_id}, block=block_ms, count=256)
        _raise_if_cancelled()
        if not response:
            if time.monotonic() - last_event_at > idle_timeout:
                yield {"type": ERROR, "seq": None, "error": error_object(
                    "No worker produced output in time; the request was cancelled.", type="server_error",
                    code="timeout")}
                return
            continue
        last_event_at = time.monotonic()
        for entry_id, fields in response[0][1]:
            last_id = entry_id
            event = _decode(entry_id, fields)
            yield event
            if event["type"] in FINAL_TYPES:
                return


async def check_resume_point(request_id, after_seq: int) -> None:
    """Refuse a resume that could only wait in silence: `after_seq` past the last
    event written (no client saw it), or at the final event of a log that has ended.

    Sequence numbers only grow, so a point that is valid now stays valid; the
    check costs one XREVRANGE.
    """
    last = await async_client().xrevrange(events_key(request_id), count=1)
    if not last:
        if after_seq:
            raise AppError(f"after_seq {after_seq} is past the end of the event log: it holds no events "
                           "(none written yet, or the log expired).", param="after_seq", code="invalid_value")
        return
    event = _decode(*last[0])
    if after_seq > event["seq"]:
        raise AppError(f"after_seq {after_seq} is past the end of the event log: the last event is seq "
                       f"{event['seq']}.", param="after_seq", code="invalid_value")
    if after_seq == event["seq"] and event["type"] in FINAL_TYPES:
        raise AppError(f"Nothing follows after_seq {after_seq}: it is the final event ('{event['type']}') "
                       "of a log that has ended.", param="after_seq", code="stream_ended")


def _raise_if_cancelled() -> None:
    """Honour a cancellation that the Redis client swallowed.

    A cancel that lands while redis-py waits on a blocking XREAD can be lost
    inside the client (the read returns "nothing yet" instead of raising), and
    the loop above would then poll for a client that has gone, renewing the
    request's reader lease so the worker kept generating for nobody (seen for
    a few percent of closed streams). The task still counts the cancel request,
    so ask it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def wait_final_sync(stream_id, *, timeout: float) -> dict | None:
    """Worker side: block until the stream's final event (or None after `timeout` seconds)."""
    client = sync_client()
    last_id, deadline = "0-0", time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.xread({events_key(stream_id): last_id}, block=500, count=256)
        for entry_id, fields in (response[0][1] if response else []):
            last_id = entry_id
            event = _decode(entry_id, fields)
            if event["type"] in FINAL_TYPES:
                return event
    return None


async def request_cancel(request_id) -> None:
    await async_client().set(cancel_key(request_id), "1", ex=_ttl())


def request_cancel_sync(request_id) -> None:
    sync_client().set(cancel_key(request_id), "1", ex=_ttl())


async def set_reader_deadline(request_id, seconds: float) -> None:
    """The worker stops unless a reader comes back (or renews) within `seconds`."""
    if seconds <= 0:
        await request_cancel(request_id)
        return
    await async_client().set(deadline_key(request_id), repr(time.time() + seconds), ex=_ttl())


async def clear_reader_deadline(request_id) -> None:
    await async_client().delete(deadline_key(request_id))


# How often a worker process asks Redis whether its requests should stop: the longest a cancel, or a reader's
# lapsed lease, waits before the request ends (docs/streaming.md).
STOP_POLL_SECONDS = 0.1


def _stop_reason(cancelled, deadline, now: float) -> str | None:
    if cancelled:
        return "cancelled"
    if deadline and float(deadline) <= now:
        return "client_disconnected"
    return None


class StopSignal:
    """Worker side: "should this request stop?", answered from memory.

    One thread per process (`_StopWatcher`) asks Redis about every open signal of the process in one MGET
    every STOP_POLL_SECONDS, however many requests run: a worker with 16 requests in its batch made 16 such
    round trips, and woke 16 threads, ten times a second (each taking the GIL from the engine's steps). The
    first answer is asked directly, so a request cancelled while it queued is known before it starts.

    `on_stop(callback)`: called once, from the watcher thread, when the request should stop; a task thread
    that blocks on its engine outbox is told that way. A signal is watched until `close()` or until it is
    garbage (the watcher holds it weakly).
    """

    def __init__(self, request_id):
        self.keys = (cancel_key(request_id), deadline_key(request_id))
        self._lock = threading.Lock()
        self._callback: Callable[[], None] | None = None
        self.reason: str | None = _stop_reason(*sync_client().mget(self.keys), time.time())
        if self.reason is None:
            _watcher().add(self)

    def __call__(self) -> bool:
        return self.reason is not None

    def on_stop(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._callback = callback
            stopped = self.reason is not None
        if stopped:
            callback()

    def close(self) -> None:
        _watcher().discard(self)

    def __enter__(self) -> "StopSignal":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _stop(self, reason: str) -> None:
        """From the watcher thread."""
        with self._lock:
            if self.reason is not None:
                return
            self.reason, callback = reason, self._callback
        if callback is not None:
            callback()


class _StopWatcher:
    def __init__(self):
        self._signals: weakref.WeakSet[StopSignal] = weakref.WeakSet()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, signal: StopSignal) -> None:
        with self._changed:
            self._signals.add(signal)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="aihub-stop-watcher", daemon=True)
                self._thread.start()
            self._changed.notify()

    def discard(self, signal: StopSignal) -> None:
        with self._changed:
            self._signals.discard(signal)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._signals:
                    self._changed.wait()
                signals = list(self._signals)
            try:
                values = sync_client().mget([key for signal in signals for key in signal.keys])
            except redis.RedisError as exc:  # the client already retried: ask again next round
                logger.warning("could not read the stop flags of %d request(s): %s", len(signals), exc)
            else:
                now = time.time()
                for index, signal in enumerate(signals):
                    reason = _stop_reason(values[2 * index], values[2 * index + 1], now)
                    if reason is not None:
                        self.discard(signal)
                        try:
                            signal._stop(reason)
                        except Exception:  # noqa: BLE001 - one request's callback must not end the watching
                            logger.exception("stopping a request failed")
            del signals  # hold no signal while sleeping: a finished request's signal goes with its thread
            time.sleep(STOP_POLL_SECONDS)


_watcher_lock = threading.Lock()
_process_watcher: _StopWatcher | None = None


def _watcher() -> _StopWatcher:
    """This process's watcher, made on first use."""
    global _process_watcher
    with _watcher_lock:
        if _process_watcher is None:
            _process_watcher = _StopWatcher()
        return _process_watcher


def _forget_watcher_after_fork() -> None:
    """A forked child (a prefork pool process) inherits no thread: it makes a watcher of its own, under a lock
    that no thread of its parent may hold."""
    global _watcher_lock, _process_watcher
    _watcher_lock, _process_watcher = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_watcher_after_fork)
