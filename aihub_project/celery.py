import os
import sys

from celery import Celery


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
if _option(sys.argv, "--pool", "-P") == "threads":
    os.environ.setdefault("DATABASE_POOL", "true")
    threads = _option(sys.argv, "--concurrency", "-c")
    if threads and threads.isdigit():
        os.environ.setdefault("DATABASE_POOL_MAX_SIZE", str(int(threads) + 8))

app = Celery("aihub")
# Delivery guarantees, queues and routes live in one reviewed place.
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks")
