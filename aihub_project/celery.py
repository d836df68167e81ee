import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aihub_project.settings")

app = Celery("aihub")
# Delivery guarantees, queues and routes live in one reviewed place.
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["workers"], related_name="tasks")
