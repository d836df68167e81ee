import os
import sys

from celery import Celery


def _threads_pool(argv: list[str]) -> bool:
    """Whether this process is a worker running Celery's threads pool (`--pool threads`, `-P threads`)."""
    for index, arg in enumerate(argv):
        if arg in ("--pool", "-P") and argv[index + 1:index + 2] == ["threads"]:
            return True
        if arg in ("--pool=threads", "-Pthreads"):
            return True
    return False


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aihub_project.settings")
# A threads-pool worker (the inference worker) borrows database connections from a pool, as the web process
# does: Celery's Django fixup closes a task's connection before and after every task, and opening a new one
# cost ~20 ms of each request's time to first token. Set before Django reads its settings.
if _threads_pool(sys.argv):
    os.environ.setdefault("DATABASE_POOL", "true")

app = Celery("aihub")
# Delivery guarantees, queues and routes live in one reviewed place.
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks")
