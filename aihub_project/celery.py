import os
import sys

from celery import Celery
from celery.signals import task_prerun


def _option(argv: list[str], *names: str) -> str | None:
    """The value of a command-line option given as `--name value`, `--name=value` or, short, `-Xvalue`."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name:
                return argv[index + 1] if index + 1 < len(argv) else None
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
            if len(name) == 2 and arg.startswith(name):
                return arg[2:]
    return None


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aihub_project.settings")
# A threads-pool worker (the inference worker) borrows database connections from a pool, as the web process
# does: Celery's Django fixup closes a task's connection before and after every task, and opening a new one
# cost ~20 ms of each request's time to first token. Set before Django reads its settings.
# The pool holds up to one connection per task thread plus the worker's own threads (heartbeat, presence,
# audio, embeddings), so no task ever waits for one; idle ones are closed by the pool, not by each task.
THREADS_POOL = _option(sys.argv, "--pool", "-P") == "threads"
if THREADS_POOL:
    os.environ.setdefault("DATABASE_POOL", "true")
    threads = _option(sys.argv, "--concurrency", "-c")
    if threads and threads.isdigit():
        os.environ.setdefault("DATABASE_POOL_MAX_SIZE", str(int(threads) + 8))

app = Celery("aihub")
# Delivery guarantees, queues and routes live in one reviewed place.
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks")

# Any other worker (prefork: the default and training queues) keeps its pool processes' connections from one
# task to the next, as the web keeps one across requests. Celery's Django fixup would close them before and
# after every task unless CELERY_DB_REUSE_MAX is set; it then closes them every that many tasks instead. Every
# chat request sends a task to the default queue (its messages' embeddings), and each cost a new PostgreSQL
# connection: a backend forked, authenticated and set up, milliseconds of CPU taken from the models on a small
# machine. Before each task a connection is checked as Django checks one before each request: closed if it
# had errors and is now unusable, or is older than CONN_MAX_AGE; with CONN_HEALTH_CHECKS, pinged before reuse.
if not THREADS_POOL:
    app.conf.CELERY_DB_REUSE_MAX = 1000

    @task_prerun.connect(weak=False)
    def _check_connections(**kwargs) -> None:
        from django.db import connections

        for connection in connections.all(initialized_only=True):
            connection.close_if_unusable_or_obsolete()
