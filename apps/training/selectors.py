from __future__ import annotations

import uuid

from django.db.models import Q

from apps.core.errors import AppError, NotFoundError

from .models import TrainingCheckpoint, TrainingEvent, TrainingFile, TrainingJob


def parse_public_id(raw, prefix: str) -> uuid.UUID | None:
    text = str(raw)
    if text.startswith(prefix + "-"):
        text = text[len(prefix) + 1:]
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def training_file_get(*, user, file_id, param: str = "file_id") -> TrainingFile:
    pk = parse_public_id(file_id, "file")
    record = TrainingFile.objects.filter(user=user, id=pk).first() if pk else None
    if record is None:
        raise NotFoundError(f"No file with id '{file_id}'.", param=param, code="file_not_found")
    return record


def training_job_get(*, user, job_id) -> TrainingJob:
    pk = parse_public_id(job_id, "ftjob")
    job = TrainingJob.objects.filter(user=user, id=pk).first() if pk else None
    if job is None:
        raise NotFoundError(f"No fine-tuning job with id '{job_id}'.", param="job_id", code="job_not_found")
    return job


# Pages of OpenAI's list calls: newest first, `after` = the id of the previous page's last object.

def _page(queryset, limit: int) -> tuple[list, bool]:
    rows = list(queryset[:limit + 1])
    return rows[:limit], len(rows) > limit


def _after_missing(after: str) -> NotFoundError:
    return NotFoundError(f"No object with id '{after}' to list after.", param="after", code="not_found")


def training_jobs_page(*, user, after: str | None, limit: int) -> tuple[list[TrainingJob], bool]:
    jobs = TrainingJob.objects.filter(user=user).select_related("training_file", "validation_file")
    jobs = jobs.order_by("-created_at", "-id")
    if after:
        pk = parse_public_id(after, "ftjob")
        last = TrainingJob.objects.filter(user=user, id=pk).first() if pk else None
        if last is None:
            raise _after_missing(after)
        jobs = jobs.filter(Q(created_at__lt=last.created_at) | Q(created_at=last.created_at, id__lt=last.id))
    return _page(jobs, limit)


def training_events_page(*, job: TrainingJob, after: str | None, limit: int) -> tuple[list[TrainingEvent], bool]:
    events = job.events.order_by("-id")
    if after:
        number = after.removeprefix("ftevent-")
        if not number.isdigit():
            raise AppError(f"after: '{after}' is not an event id (ftevent-N).", param="after", code="invalid_value")
        events = events.filter(id__lt=int(number))
    return _page(events, limit)


def training_checkpoints_page(*, job: TrainingJob, after: str | None,
                              limit: int) -> tuple[list[TrainingCheckpoint], bool]:
    checkpoints = job.checkpoints.select_related("job").order_by("-step")
    if after:
        number = after.removeprefix("ftckpt-")
        last = job.checkpoints.filter(id=int(number)).first() if number.isdigit() else None
        if last is None:
            raise _after_missing(after)
        checkpoints = checkpoints.filter(step__lt=last.step)
    return _page(checkpoints, limit)


def training_job_metric_points(*, job: TrainingJob, after_step: int = 0) -> list[dict]:
    """The loss curve: one point {step, loss, learning_rate} per logged optimizer step, in step order.

    Read from the job's metric events (workers/training.py logs one per step). A job resumed after a
    crash logs again the steps past its checkpoint: the last logged value of a step is the one kept.
    """
    points = {}
    rows = job.events.filter(type="metrics").order_by("id").values_list("data", flat=True)
    for data in rows:
        step = (data or {}).get("step")
        if isinstance(step, int) and step > after_step:
            points[step] = {"step": step, "loss": data.get("train_loss"), "learning_rate": data.get("learning_rate")}
    return [points[step] for step in sorted(points)]
