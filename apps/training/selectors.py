from __future__ import annotations

import uuid

from apps.core.errors import NotFoundError

from .models import TrainingFile, TrainingJob


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
