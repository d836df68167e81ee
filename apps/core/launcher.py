"""What the hub launches: the command line of each of its processes (daphne, Celery workers).

`manage.py runhub` runs them under its Supervisor (apps/core/supervisor.py); the tests and benchmarks
start the same command lines (tests/support/processes.py), so they run what an operator runs.
"""
from __future__ import annotations

import sys


def web_server(host: str, port: int) -> list[str]:
    # daphne with TCP_NODELAY (aihub_project/web.py)
    return [sys.executable, "-m", "aihub_project.web", "-b", host, "-p", str(port), "aihub_project.asgi:application"]


def celery_worker(name: str, queue: str, concurrency: int | None = None, *, beat: bool = False) -> list[str]:
    """A worker consuming `queue` (comma-separated names), with `concurrency` pool slots.

    One that consumes the inference queue runs Celery's threads pool, AIHUB_INFERENCE_THREADS threads
    unless told: one process owns the device and batches the requests its threads hand to it
    (docs/queues.md). Every other worker runs prefork pool processes, one unless told. `beat`: this
    worker also runs the scheduler of the periodic sweep (celeryconfig.beat_schedule); one per hub.
    """
    from django.conf import settings

    import celeryconfig

    if celeryconfig.INFERENCE_QUEUE in queue.split(","):
        pool, concurrency = "threads", concurrency or settings.AIHUB_INFERENCE_THREADS
    else:
        pool, concurrency = "prefork", concurrency or 1
    return [sys.executable, "-m", "celery", "-A", "aihub_project", "worker", "-Q", queue,
            "-c", str(concurrency), "-n", f"{name}@%h", "--pool", pool, "-l", "INFO",
            "--without-mingle", "--without-gossip", *(["--beat"] if beat else [])]
