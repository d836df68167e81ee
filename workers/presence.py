"""Presence beats: every worker says, every AIHUB_HEARTBEAT_SECONDS, which queues it consumes.

The inference heartbeat (workers/heartbeat.py) is written only by inference
workers, since it also feeds routing; /health needs to know about every
worker (training, default) without asking the broker to broadcast an
`inspect` and wait for replies. Key `aihub:presence:<nodename>`, a small JSON
document with a TTL of three beats, written by a thread in the worker's main
process.
"""
from __future__ import annotations

import json
import logging
import threading
import time

from django.conf import settings

from apps.core.redis import sync_client
from apps.monitoring.health import PRESENCE_PREFIX

logger = logging.getLogger(__name__)


def start(nodename: str, queues: list[str]) -> threading.Thread:
    def loop():
        while True:
            interval = settings.AIHUB_HEARTBEAT_SECONDS
            try:
                sync_client().set(PRESENCE_PREFIX + nodename, json.dumps({
                    "hostname": nodename, "queues": queues, "reported_at": time.time()}),
                    px=int(interval * 3000))
            except Exception:  # noqa: BLE001 - a missed beat must not kill the thread
                logger.exception("presence beat failed")
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="aihub-presence", daemon=True)
    thread.start()
    return thread
