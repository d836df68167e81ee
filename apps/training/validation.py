"""Dataset validation, run on the default (CPU) queue.

Each validation first counts an attempt on its row (committed before any
work), so a message whose worker died mid-validation (and is redelivered by
acks_late) finds the count in PostgreSQL: beyond AIHUB_TASK_MAX_ATTEMPTS the
file ends `error`, the job `failed`, never a loop. Any unexpected exception
also ends the row with its reason instead of leaving it `uploaded`.
"""
from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db.models import F

from .datasets import validate_file
from .models import TrainingFile, TrainingJob
from .services import job_error, job_event, job_finish, job_queue

logger = logging.getLogger(__name__)
REPEATED = "validation failed repeatedly: started {lost} times without finishing, so the {what} is not read again"


def _file_end(file: TrainingFile, *, status: str, format: str = "", examples: int = 0,
              errors: list[dict]) -> TrainingFile:
    """uploaded -> processed | error, by compare-and-set: a concurrent validation of the same file ends it once."""
    TrainingFile.objects.filter(id=file.id, status=TrainingFile.Status.UPLOADED).update(
        status=status, format=format, examples=examples, errors=errors)
    file.refresh_from_db()
    return file


def training_file_validate(file: TrainingFile) -> TrainingFile:
    if file.status != TrainingFile.Status.UPLOADED:
        return file
    TrainingFile.objects.filter(id=file.id).update(validation_attempts=F("validation_attempts") + 1)
    file.refresh_from_db()
    if file.status != TrainingFile.Status.UPLOADED:
        return file
    if file.validation_attempts > settings.AIHUB_TASK_MAX_ATTEMPTS:
        message = REPEATED.format(lost=file.validation_attempts - 1, what="file")
        return _file_end(file, status=TrainingFile.Status.ERROR, errors=[{"line": None, "message": message}])
    try:
        result = validate_file(Path(file.path))
    except Exception as exc:  # noqa: BLE001 - the file must end with a reason, never stay `uploaded`
        logger.exception("validating file %s failed", file.id)
        return _file_end(file, status=TrainingFile.Status.ERROR,
                         errors=[{"line": None, "message": f"validation failed: {type(exc).__name__}: {exc}"[:500]}])
    return _file_end(file, status=TrainingFile.Status.PROCESSED if result.ok else TrainingFile.Status.ERROR,
                     format=result.format, examples=result.examples, errors=result.errors)


def _job_fail(job: TrainingJob, *, label: str | None, message: str, code: str, lines: list | None = None) -> None:
    error = job_error(code=code, message=message, param=label)
    if lines is not None:
        error["lines"] = lines
    job_finish(job, TrainingJob.Status.FAILED, from_states=[TrainingJob.Status.VALIDATING_FILES],
               message=f"Invalid {label}: {message}" if label else f"Validation failed: {message}", error=error)


def training_job_validate(job: TrainingJob) -> None:
    """Validate the job's data, counting the attempt; queue it for the GPU, or fail it with a reason."""
    TrainingJob.objects.filter(id=job.id).update(validation_attempts=F("validation_attempts") + 1)
    job.refresh_from_db()
    if job.status != TrainingJob.Status.VALIDATING_FILES:
        return
    if job.validation_attempts > settings.AIHUB_TASK_MAX_ATTEMPTS:
        _job_fail(job, label=None, code="validation_failed",
                  message=REPEATED.format(lost=job.validation_attempts - 1, what="training data"))
        return
    try:
        _validate_job_data(job)
    except Exception as exc:  # noqa: BLE001 - the job must end with its reason
        logger.exception("validating job %s failed", job.id)
        _job_fail(job, label=None, code="validation_failed", message=f"{type(exc).__name__}: {exc}"[:500])


def _validate_job_data(job: TrainingJob) -> None:
    problems = []
    for label, file in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file is not None:
            file = training_file_validate(file)
            if file.status == TrainingFile.Status.ERROR:
                problems.append((label, file.errors))
    if job.dataset_path:
        result = validate_file(Path(job.dataset_path))
        if not result.ok:
            problems.append(("dataset_path", result.errors))
        else:
            job_event(job, f"dataset_path holds {result.examples} {result.format} examples.")
    if problems:
        label, errors = problems[0]
        first = errors[0]
        where = f"line {first['line']}: " if first.get("line") else ""
        _job_fail(job, label=label, code="invalid_training_file", message=f"{where}{first['message']}", lines=errors)
        return
    job_queue(job)
