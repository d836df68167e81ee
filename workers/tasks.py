"""Celery tasks. They take IDs only and import torch lazily (the web process may import this)."""
import logging
import os

from celery import shared_task
from celery.signals import worker_ready

logger = logging.getLogger(__name__)


@shared_task(name="workers.tasks.generate_chat_completion", bind=True, ignore_result=True)
def generate_chat_completion(self, generation_id: str) -> None:
    from .generation import run_generation

    run_generation(generation_id, worker=f"{self.request.hostname}:{os.getpid()}")


@worker_ready.connect
def _fail_requests_orphaned_by_a_previous_run(sender=None, **kwargs):
    from .generation import fail_orphaned_requests

    queues = {q.name for q in sender.app.amqp.queues.consume_from.values()} if sender else set()
    if "gpu.inference" in queues:
        count = fail_orphaned_requests(sender.hostname)
        if count:
            logger.warning("failed %d request(s) left running by a previous run of this host", count)
