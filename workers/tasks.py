"""Celery tasks and worker start-up hooks. Tasks take IDs only and import torch lazily."""
import logging
import os

from celery import shared_task
from celery.signals import celeryd_after_setup, task_prerun, worker_ready

import celeryconfig

from . import heartbeat, presence

logger = logging.getLogger(__name__)


@shared_task(name=celeryconfig.GENERATE_TASK, bind=True, ignore_result=True)
def generate_chat_completion(self, generation_id: str) -> None:
    from .generation import run_generation

    run_generation(generation_id, worker=f"{self.request.hostname}:{os.getpid()}")


@shared_task(name=celeryconfig.MODEL_COMMAND_TASK, ignore_result=True)
def model_control(action: str, model_id: str, reply_id: str, options: dict) -> None:
    from .model_commands import run_control

    run_control(action, model_id, reply_id, options)


@shared_task(name=celeryconfig.VALIDATE_FILE_TASK, ignore_result=True)
def validate_training_file(file_id: str) -> None:
    from apps.training.models import TrainingFile
    from apps.training.validation import training_file_validate

    file = TrainingFile.objects.filter(id=file_id).first()
    if file is not None:
        training_file_validate(file)


@shared_task(name=celeryconfig.VALIDATE_JOB_TASK, ignore_result=True)
def validate_training_job(job_id: str) -> None:
    from apps.training.models import TrainingJob
    from apps.training.validation import training_job_validate

    job = TrainingJob.objects.filter(id=job_id, status=TrainingJob.Status.VALIDATING_FILES).first()
    if job is not None:
        training_job_validate(job)


@shared_task(name=celeryconfig.TRAIN_TASK, bind=True, ignore_result=True)
def run_training_job(self, job_id: str) -> None:
    from .training import run_training_job as train

    train(job_id, worker=f"{self.request.hostname}:{os.getpid()}")


@shared_task(name=celeryconfig.INGEST_VECTOR_STORE_FILE_TASK, ignore_result=True)
def ingest_vector_store_file(entry_id: str, generation: int) -> None:
    """Chunk one file of a vector store and have it embedded (apps/vectorstores/ingestion.py); no torch here."""
    from apps.vectorstores.ingestion import vector_store_file_ingest

    vector_store_file_ingest(entry_id, generation)


@shared_task(name=celeryconfig.SWEEP_TASK, ignore_result=True)
def sweep_stale_work(republish_after: float, give_up_after: float, batch: int) -> None:
    """Scheduled by beat (celeryconfig.beat_schedule), which passes its thresholds along."""
    from .sweeper import sweep

    sweep(republish_after=republish_after, give_up_after=give_up_after, batch=batch)


@shared_task(name=celeryconfig.EMBED_MESSAGES_TASK, ignore_result=True)
def embed_conversation_messages(conversation_id: str) -> None:
    """Idempotent: it embeds what is missing when it runs (apps/chat/message_embeddings.py)."""
    from apps.chat.message_embeddings import message_embeddings_update

    message_embeddings_update(conversation_id=conversation_id)


@celeryd_after_setup.connect
def _add_worker_queue(sender, instance, **kwargs):
    """Inference workers also consume a queue of their own (model affinity, load/unload)."""
    from django.utils import timezone

    heartbeat.identity["started_at"] = timezone.now()  # before any claim of this run
    queues = instance.app.amqp.queues
    consumed = sorted(queues.consume_from) if queues.consume_from else []
    if celeryconfig.TRAINING_QUEUE in consumed:
        heartbeat.identity["trains"] = True
    if celeryconfig.INFERENCE_QUEUE not in consumed:
        return
    own = heartbeat.worker_queue(sender)
    queues.select_add(own)
    heartbeat.identity.update(nodename=sender, queues=consumed + [own], control_queue=own)


@task_prerun.connect
def _task_threads_compute_inline(**kwargs):
    """An inference worker's task threads load models and make image tensors with torch; only the engine's thread
    computes with a team of threads (workers/compute_threads.py says why)."""
    if heartbeat.identity["nodename"]:
        from .compute_threads import inline

        inline()


@worker_ready.connect
def _start_heartbeat(**kwargs):
    """An inference worker is one process (its task threads share the engine and the device), so it beats
    from there; workers/batching.py explains why threads."""
    if heartbeat.identity["nodename"]:
        from .model_manager import get_manager

        heartbeat.start(get_manager())


@worker_ready.connect
def _start_embedding_threads(**kwargs):
    """Embeddings are served beside the Celery threads, not by them (apps/embeddings/jobs.py says why)."""
    if heartbeat.identity["nodename"]:
        from . import embeddings
        from .model_manager import get_manager

        embeddings.start(get_manager(), heartbeat.identity["nodename"])


@worker_ready.connect
def _start_audio_threads(**kwargs):
    """Transcriptions and speech are served beside the Celery threads too (apps/audio/jobs.py)."""
    if heartbeat.identity["nodename"]:
        from . import audio
        from .model_manager import get_manager

        audio.start(get_manager(), heartbeat.identity["nodename"])


@worker_ready.connect
def _announce_presence(sender=None, **kwargs):
    """Every worker, whatever it consumes, tells /health so (workers/presence.py)."""
    queues = sender.app.amqp.queues
    presence.start(sender.hostname, sorted(queues.consume_from or queues))


@worker_ready.connect
def _resume_training_jobs_orphaned_by_a_crash(sender=None, **kwargs):
    if heartbeat.identity.get("trains"):
        from .sweeper import requeue_orphaned_jobs

        count = requeue_orphaned_jobs()
        if count:
            logger.warning("re-queued %d training job(s) whose worker died", count)


@worker_ready.connect
def _recover_requests_orphaned_by_a_previous_run(sender=None, **kwargs):
    if heartbeat.identity["nodename"]:
        from .generation import recover_orphaned_requests

        count = recover_orphaned_requests(sender.hostname, started_before=heartbeat.identity["started_at"])
        if count:
            logger.warning("recovered %d request(s) left running or queued by a previous run of this worker", count)
