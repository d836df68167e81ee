"""Worker heartbeats: each inference worker process reports its state to Redis.

Key `aihub:workers:<nodename>`, a JSON document rewritten every
AIHUB_HEARTBEAT_SECONDS with a TTL of three beats: a worker that stops
reporting drops out of status (and out of routing) within three beats. The
API reads these documents (apps/catalog/worker_registry.py); the reaper that unloads
idle models rides on the same thread. The process also renews a key of
its own (`hostname:pid`), so that a request's `worker` can be told alive or
gone (apps/catalog/worker_registry.process_alive).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from django.conf import settings

from apps.catalog.worker_registry import HEARTBEAT_PREFIX, PROCESS_PREFIX, PROCESS_TTL_BEATS
from apps.core.redis import sync_client

logger = logging.getLogger(__name__)

# Set in the worker's process at start-up (celeryd_after_setup); its task threads share it.
identity: dict = {"nodename": None, "queues": [], "control_queue": None, "trains": False, "started_at": None}


def worker_queue(nodename: str) -> str:
    """The queue only this worker consumes: control commands and requests routed to it by model affinity."""
    return f"worker.{nodename}"


def beat_once(manager) -> None:
    state = {**manager.snapshot(), "hostname": identity["nodename"], "queues": identity["queues"],
             "control_queue": identity["control_queue"], "pid": os.getpid(), "reported_at": time.time()}
    interval = settings.AIHUB_HEARTBEAT_SECONDS
    pipe = sync_client().pipeline(transaction=False)
    pipe.set(HEARTBEAT_PREFIX + identity["nodename"], json.dumps(state), px=int(interval * 3000))
    # This process's own key: a request row's `worker` is alive while it exists (workers/generation.py).
    pipe.set(f"{PROCESS_PREFIX}{identity['nodename']}:{os.getpid()}", 1, px=int(interval * PROCESS_TTL_BEATS * 1000))
    pipe.execute()


def start(manager) -> threading.Thread:
    manager.on_change = lambda: _beat_quietly(manager)

    def loop():
        while True:
            try:
                manager.unload_expired()
                beat_once(manager)
            except Exception:  # noqa: BLE001 - a missed beat must not kill the thread
                logger.exception("heartbeat failed")
            time.sleep(settings.AIHUB_HEARTBEAT_SECONDS)

    thread = threading.Thread(target=loop, name="aihub-heartbeat", daemon=True)
    thread.start()
    return thread


def _beat_quietly(manager) -> None:
    try:
        beat_once(manager)
    except Exception:  # noqa: BLE001 - the periodic beat will catch up
        logger.exception("heartbeat after a model change failed")
