"""Threads of an inference worker that serve jobs from Redis lists, beside its Celery threads.

The embedding threads (workers/embeddings.py) and the audio threads (workers/audio.py) are
served this way; docs/queues.md says why a list of their own rather than a Celery task. Each
thread blocks on the worker's own list, then the shared one, for a job; takes what else
already waits, up to `max_jobs` in all (the embedding threads batch them, the audio threads
serve one at a time); drops the jobs whose client gave up (past their expiry: the web has
answered its 504); and hands the rest to `serve`. The web side that pushes the jobs is
apps/catalog/job_lists.py.

`serve` answers every job it is given, errors included: a job is not acknowledged (popped is
taken), so nothing else would. What fails outside it (Redis restarting, the database gone) is
logged and the thread goes on: nothing would start it again.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

from django.db import close_old_connections

from apps.core.redis import sync_client

logger = logging.getLogger(__name__)

POP_TIMEOUT_SECONDS = 1  # how long an idle thread blocks on the lists before it looks again
FAILURE_PAUSE_SECONDS = 1  # after a failure, so that a Redis outage is not a busy loop of tracebacks


class Job(Protocol):
    """What the threads need of a job message (apps/embeddings/jobs.py, apps/audio/jobs.py)."""

    id: str

    @property
    def expired(self) -> bool: ...


JobT = TypeVar("JobT", bound=Job)


class JobThreads(Generic[JobT]):
    """Daemon threads `aihub-<kind>-<n>` that pop jobs from `queues` (the first list first) and serve them.

    `loads` turns a message into its job; `serve` gets the live jobs of one take, at most `max_jobs`.
    """

    def __init__(self, kind: str, *, queues: Sequence[str], loads: Callable[[str], JobT],
                 serve: Callable[[list[JobT]], None], max_jobs: int = 1):
        self.kind = kind
        self.queues = list(queues)
        self.loads = loads
        self.serve = serve
        self.max_jobs = max_jobs

    def start(self, threads: int) -> list[threading.Thread]:
        started = []
        for number in range(threads):
            thread = threading.Thread(target=self._loop, name=f"aihub-{self.kind}-{number}", daemon=True)
            thread.start()
            started.append(thread)
        return started

    def _loop(self) -> None:
        from .compute_threads import inline

        inline()  # the engine's thread alone computes with a team of threads (workers/compute_threads.py)
        while True:
            try:
                jobs = self.take()
                if jobs:
                    close_old_connections()  # a long-lived thread: drop a connection the database closed
                    self.serve(jobs)
            except Exception:  # noqa: BLE001 - the thread must outlive a Redis or database hiccup
                logger.exception("%s thread failed; going on", self.kind)
                time.sleep(FAILURE_PAUSE_SECONDS)

    def take(self) -> list[JobT]:
        """Block for one job, then take what else waits (up to max_jobs in all); the jobs still worth serving."""
        client = sync_client()
        popped = client.brpop(self.queues, timeout=POP_TIMEOUT_SECONDS)
        if not popped:
            return []
        raw = [popped[1]]
        for queue in self.queues:
            if len(raw) < self.max_jobs:
                raw += client.rpop(queue, self.max_jobs - len(raw)) or []
        jobs = [self.loads(item) for item in raw]
        live = [job for job in jobs if not job.expired]
        if len(live) < len(jobs):
            logger.warning("skipped %s job(s) %s whose client stopped waiting", self.kind,
                           ", ".join(job.id for job in jobs if job.expired))
        return live
