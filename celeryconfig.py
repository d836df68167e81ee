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

task_default_queue = DEFAULT_QUEUE
task_queues = (Queue(DEFAULT_QUEUE), Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE))
task_routes = {
    "workers.tasks.generate_chat_completion": {"queue": INFERENCE_QUEUE},
    "workers.tasks.run_training_job": {"queue": TRAINING_QUEUE},
    "workers.tasks.validate_training_file": {"queue": DEFAULT_QUEUE},
    "workers.tasks.validate_training_job": {"queue": DEFAULT_QUEUE},
}

# Acknowledge after the task ran, not when it was received: a worker that dies
# mid-generation leaves the message in the broker for another worker.
task_acks_late = True
# ...and when the worker process itself is lost (OOM kill, kill -9) the message
# is requeued rather than acked; the request row's state decides what happens then.
task_reject_on_worker_lost = True
# One message at a time per process: a GPU worker runs one generation at once,
# and a prefetched second message would sit behind it instead of going to a free worker.
worker_prefetch_multiplier = 1
# A pool process that replaces a killed one imports torch and sets up its model manager before it
# reports "up"; Celery's default patience (4 s) is shorter than that on a busy host, and it then
# kills the newcomer and starts another, in a loop (seen by bench/chaos.py: no answer for minutes).
worker_proc_alive_timeout = 60
# With Redis as broker an unacked message is redelivered after the visibility
# timeout; it must exceed the longest task, or a slow generation would be
# delivered twice while still running (the compare-and-set would refuse it,
# but the client would see a failure). Longest task: a training job (hours).
broker_transport_options = {"visibility_timeout": 12 * 3600}
result_expires = 3600
# Tasks carry IDs only; JSON keeps messages readable in Flower.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
# Generation has its own cooperative cancellation and timeout; the hard limit
# is a last resort against a wedged process.
task_time_limit = 3600
task_soft_time_limit = 3500
# Events feed Flower's task view.
worker_send_task_events = True
task_send_sent_event = True
task_track_started = True
broker_connection_retry_on_startup = True
worker_hijack_root_logger = False
