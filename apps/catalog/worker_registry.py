"""What the API knows of live workers: their heartbeats (workers/heartbeat.py) and queue depths."""
from __future__ import annotations

import json
from dataclasses import dataclass

import celeryconfig
from apps.core.redis import async_client, sync_client

HEARTBEAT_PREFIX = "aihub:workers:"  # workers/heartbeat.py writes under it
# One key per worker process ("hostname:pid", the `worker` of a request row), renewed with the heartbeat.
PROCESS_PREFIX = "aihub:worker-process:"
# Five beats, not three: a process wrongly taken for dead has its unstarted request run elsewhere,
# so a slow beat under load must not look like a death (a real one is noticed within this).
PROCESS_TTL_BEATS = 5


@dataclass
class WorkerState:
    hostname: str
    control_queue: str
    device: str
    budget_bytes: int
    models_bytes: int
    memory_total_bytes: int
    memory_used_bytes: int
    loaded: dict[str, dict]
    raw: dict

    @property
    def device_type(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    @property
    def free_bytes(self) -> int:
        """Room for another model: the budget left, and never more than the device has free."""
        budget_left = self.budget_bytes - self.models_bytes
        device_free = self.memory_total_bytes - self.memory_used_bytes
        return max(0, min(budget_left, device_free))

    @classmethod
    def from_heartbeat(cls, data: dict) -> "WorkerState":
        return cls(
            hostname=data["hostname"], control_queue=data["control_queue"], device=data["device"],
            budget_bytes=data["budget_bytes"], models_bytes=data["models_bytes"],
            memory_total_bytes=data["memory_total_bytes"], memory_used_bytes=data["memory_used_bytes"],
            loaded={m["id"]: m for m in data["loaded_models"]}, raw=data)


def _parse(values) -> list[WorkerState]:
    return sorted((WorkerState.from_heartbeat(json.loads(v)) for v in values if v), key=lambda w: w.hostname)


def process_alive(worker: str) -> bool:
    """Is the worker process `hostname:pid` that claimed a request still beating?"""
    return bool(worker) and bool(sync_client().exists(PROCESS_PREFIX + worker))


def live_workers() -> list[WorkerState]:
    client = sync_client()
    keys = list(client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100))
    return _parse(client.mget(keys)) if keys else []


async def alive_workers() -> list[WorkerState]:
    client = async_client()
    keys = [key async for key in client.scan_iter(match=HEARTBEAT_PREFIX + "*", count=100)]
    return _parse(await client.mget(keys)) if keys else []


def queue_depths(names: list[str]) -> dict[str, int | None]:
    """Messages waiting per queue (None where the broker cannot tell)."""
    from aihub_project.celery import app

    depths: dict[str, int | None] = {}
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        for name in names:
            try:
                depths[name] = channel.queue_declare(queue=name, passive=True).message_count
            except Exception:  # noqa: BLE001 - a queue nobody declared yet
                depths[name] = 0
    return depths


def known_queues(workers: list[WorkerState]) -> list[str]:
    return [celeryconfig.DEFAULT_QUEUE, *celeryconfig.GPU_QUEUES, *(w.control_queue for w in workers)]
