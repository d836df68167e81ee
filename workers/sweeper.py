"""The periodic sweep: work whose message or worker was lost, found from the database and put right.

Celery beat publishes `workers.tasks.sweep_stale_work` (celeryconfig.SWEEP_TASK) every
AIHUB_SWEEP_INTERVAL_SECONDS to the default queue (docs/queues.md). Each sweep
is a few indexed queries (`state` is indexed and live rows are few: the queue
is bounded) over at most `batch` rows of each kind, and every change is a
compare-and-set, so two sweeps at once, or a sweep racing a worker, do no harm.
This module imports no torch: it runs on the CPU worker.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from django.utils import timezone

import celeryconfig
from apps.catalog.worker_registry import process_alive
from apps.chat.models import GenerationRequest
from apps.chat.services import generation_fail, generation_publish
from apps.core.errors import error_object
from apps.core.publishing import send_task
from apps.core.redis import sync_client
from apps.training.models import TrainingJob

logger = logging.getLogger(__name__)
State = GenerationRequest.State


def training_lock_key(job_id) -> str:
    """Held by the worker training the job (workers/training.py JobLock); here so the sweep needs no torch."""
    return f"aihub:train:{job_id}:lock"


def sweep(*, republish_after: float, give_up_after: float, batch: int) -> dict[str, int]:
    counts = {
        "timed_out": _fail_expired_queued(give_up_after, batch),
        "republished": republish_unclaimed(queued_before=timezone.now() - timedelta(seconds=republish_after),
                                           batch=batch),
        "recovered": _recover_lost_running(batch),
        "training_resent": requeue_orphaned_jobs(batch=batch),
    }
    if any(counts.values()):
        logger.warning("sweep: %s", counts)
    return counts


def _fail_expired_queued(give_up_after: float, batch: int) -> int:
    """Queued longer than any reader waits (AIHUB_REQUEST_TIMEOUT_SECONDS): nobody is left to answer."""
    cutoff = timezone.now() - timedelta(seconds=give_up_after)
    expired = GenerationRequest.objects.filter(state=State.QUEUED, created_at__lt=cutoff).order_by(
        "created_at").values_list("id", flat=True)[:batch]
    error = error_object(f"No worker took the request within {give_up_after:.0f} s; it was cancelled.",
                         type="server_error", code="queue_timeout")
    return sum(generation_fail(generation_id=generation_id, error=error, from_states=[State.QUEUED])
               for generation_id in expired)


def republish_unclaimed(*, queued_before, batch: int) -> int:
    """Queued, unclaimed since its message was sent before `queued_before`: the message may be lost (broker
    data, a dead worker's own queue or prefetch, a web process that died between commit and publish). Send
    it again; the claim makes a duplicate harmless. Used by the sweep and by a restarting inference worker."""
    now = timezone.now()
    stale = GenerationRequest.objects.filter(state=State.QUEUED, queued_at__lt=queued_before).order_by(
        "queued_at").values_list("id", "queued_at")[:batch]
    count = 0
    for generation_id, queued_at in stale:
        if GenerationRequest.objects.filter(id=generation_id, state=State.QUEUED, queued_at=queued_at).update(
                queued_at=now):
            generation_publish(generation_id=generation_id)
            count += 1
    return count


def _recover_lost_running(batch: int) -> int:
    """Running on a process that no longer beats: what a redelivered message would have done."""
    from .generation import recover_lost

    running = GenerationRequest.objects.filter(state=State.RUNNING).values_list("id", "worker")[:batch]
    return sum(recover_lost(generation_id) for generation_id, worker in running if not process_alive(worker))


def requeue_orphaned_jobs(*, batch: int | None = None) -> int:
    """Running jobs whose lock expired lost their worker: send them again (they resume from a checkpoint)."""
    count = 0
    client = sync_client()
    for job_id in TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING).values_list("id", flat=True)[:batch]:
        if not client.exists(training_lock_key(job_id)):
            send_task(celeryconfig.TRAIN_TASK, args=[str(job_id)])
            count += 1
    return count
