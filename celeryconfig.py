"""Celery queues, routes and delivery guarantees: one reviewed place for each.

Every generation is worth a GPU's time, so the settings below favour "never
lose a request, never answer twice" over raw throughput; the worker's
compare-and-set on the request row (workers/tasks.py) is what makes a
redelivered message harmless.
"""
from django.conf import settings
from kombu import Queue

broker_url = settings.CELERY_BROKER_URL
result_backend = settings.CELERY_RESULT_BACKEND

INFERENCE_QUEUE = "gpu.inference"
TRAINING_QUEUE = "gpu.training"
DEFAULT_QUEUE = "default"
GPU_QUEUES = (INFERENCE_QUEUE, TRAINING_QUEUE)

# Every task's name, written once: the decorators (workers/tasks.py), the routes, limits and schedule
# below, and every publisher (apps/core/publishing.py) use these. The web publishes by name and so
# never imports worker code or torch.
GENERATE_TASK = "workers.tasks.generate_chat_completion"
MODEL_COMMAND_TASK = "workers.tasks.model_control"  # no route: it goes to one worker's own queue
VALIDATE_FILE_TASK = "workers.tasks.validate_training_file"
VALIDATE_JOB_TASK = "workers.tasks.validate_training_job"
TRAIN_TASK = "workers.tasks.run_training_job"
SWEEP_TASK = "workers.tasks.sweep_stale_work"
EMBED_MESSAGES_TASK = "workers.tasks.embed_conversation_messages"
INGEST_VECTOR_STORE_FILE_TASK = "workers.tasks.ingest_vector_store_file"  # CPU: chunks, asks for embeddings

task_default_queue = DEFAULT_QUEUE
task_queues = (Queue(DEFAULT_QUEUE), Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE))
# Each task's queue, unless its publisher names a worker's own queue (model affinity, model commands).
task_routes = {
    GENERATE_TASK: {"queue": INFERENCE_QUEUE},
    TRAIN_TASK: {"queue": TRAINING_QUEUE},
    VALIDATE_FILE_TASK: {"queue": DEFAULT_QUEUE},
    VALIDATE_JOB_TASK: {"queue": DEFAULT_QUEUE},
    SWEEP_TASK: {"queue": DEFAULT_QUEUE},
    # CPU work that waits on the inference worker's embedding threads (apps/chat/message_embeddings.py).
    EMBED_MESSAGES_TASK: {"queue": DEFAULT_QUEUE},
    INGEST_VECTOR_STORE_FILE_TASK: {"queue": DEFAULT_QUEUE},
}


def queue_of(task_name: str) -> str:
    """The queue a task goes to when its publisher names none (a KeyError for a task without a route)."""
    return task_routes[task_name]["queue"]


# Acknowledge after the task ran, not when it was received: a worker that dies
# mid-generation leaves the message in the broker for another worker.
task_acks_late = True
# ...and when the worker process itself is lost (OOM kill, kill -9) the message
# is requeued rather than acked; the request row's state decides what happens then.
task_reject_on_worker_lost = True
# One message per pool slot: an inference worker holds at most AIHUB_INFERENCE_THREADS requests
# (its batch and a few waiting for a row, docs/queues.md); a message beyond that stays in the broker
# for a worker with room, instead of sitting behind a full batch.
worker_prefetch_multiplier = 1
# A pool process that replaces a killed one imports torch and sets up its model manager before it
# reports "up"; Celery's default patience (4 s) is shorter than that on a busy host, and it then
# kills the newcomer and starts another, in a loop (seen by bench/chaos.py: no answer for minutes).
worker_proc_alive_timeout = 60
# With Redis as broker an unacked message is redelivered after the visibility
# timeout, and only then when its worker vanished without returning it (a pool
# process that dies is handled at once: see task_reject_on_worker_lost). It must
# exceed the longest task, or a running task would be delivered twice: training
# jobs run for hours with no time limit by default, so 12 h. Generation rows do
# not wait for it: the sweeper (workers/sweeper.py) re-publishes or fails them
# within minutes, and a late redelivery finds the row final and is ignored.
broker_transport_options = {"visibility_timeout": 12 * 3600}
result_expires = 3600
# Tasks carry IDs only; JSON keeps messages readable in Flower.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# No global time limit: each task gets one that fits it. A soft limit raises
# inside the task, which ends its row clearly; the hard one, a little later,
# kills a wedged pool process (its row is then recovered by the sweeper).
task_time_limit = None
task_soft_time_limit = None
_HARD_AFTER_SOFT = 30


def _limits(seconds: int) -> dict:
    return {"soft_time_limit": seconds, "time_limit": seconds + _HARD_AFTER_SOFT} if seconds else {}


task_annotations = {
    # No Celery limit for generations: they run in an inference worker's threads pool, which has none;
    # the batching engine ends a request at AIHUB_GENERATION_TIME_LIMIT_SECONDS (workers/batching.py).
    # None by default: training has its own cancel and checkpoints, and runs for hours.
    TRAIN_TASK: _limits(settings.AIHUB_TRAINING_TIME_LIMIT_SECONDS),
    VALIDATE_FILE_TASK: _limits(settings.AIHUB_VALIDATION_TIME_LIMIT_SECONDS),
    VALIDATE_JOB_TASK: _limits(settings.AIHUB_VALIDATION_TIME_LIMIT_SECONDS),
    MODEL_COMMAND_TASK: _limits(int(settings.AIHUB_CONTROL_TIMEOUT_SECONDS)),
    SWEEP_TASK: _limits(60),
    # A long conversation is a few jobs of BATCH_INPUTS passages, each waited for up to the request timeout.
    EMBED_MESSAGES_TASK: _limits(600),
    INGEST_VECTOR_STORE_FILE_TASK: _limits(settings.AIHUB_VECTOR_STORE_INGEST_TIME_LIMIT_SECONDS),
}

# The sweeper: beat (embedded in the default worker by `make run`, one per deployment) publishes a
# sweep to the default queue. Its thresholds travel with the message, so every default worker sweeps
# alike; `expires` drops sweeps that waited longer than one interval (the next one is on its way).
beat_schedule_filename = str(settings.AIHUB_VAR_DIR / "celerybeat-schedule")
beat_schedule = {
    "sweep-stale-work": {
        "task": SWEEP_TASK,
        "schedule": settings.AIHUB_SWEEP_INTERVAL_SECONDS,
        "kwargs": {"republish_after": settings.AIHUB_SWEEP_REPUBLISH_AFTER_SECONDS,
                   "give_up_after": settings.AIHUB_REQUEST_TIMEOUT_SECONDS,
                   "batch": settings.AIHUB_SWEEP_BATCH},
        "options": {"queue": queue_of(SWEEP_TASK), "expires": settings.AIHUB_SWEEP_INTERVAL_SECONDS,
                    "ignore_result": True},
    },
}
# Events feed Flower's task view.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
