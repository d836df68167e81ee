"""Dataset validation, run on the default (CPU) queue."""
from __future__ import annotations

from pathlib import Path

from .datasets import validate_file
from .models import TrainingFile, TrainingJob
from .services import job_event, job_finish, job_queue


def training_file_validate(file: TrainingFile) -> TrainingFile:
    if file.status != TrainingFile.Status.UPLOADED:
        return file
    result = validate_file(Path(file.path))
    file.status = TrainingFile.Status.PROCESSED if result.ok else TrainingFile.Status.ERROR
    file.format, file.examples, file.errors = result.format, result.examples, result.errors
    file.save(update_fields=["status", "format", "examples", "errors"])
    return file


def training_job_validate(job: TrainingJob) -> None:
    """Validate the job's data; queue it for the GPU, or fail it with the first bad lines."""
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
        job_finish(job, TrainingJob.Status.FAILED, from_states=[TrainingJob.Status.VALIDATING_FILES],
                   message=f"Invalid {label}: {where}{first['message']}",
                   error={"code": "invalid_training_file", "param": label, "message": f"{where}{first['message']}",
                          "lines": errors})
        return
    job_queue(job)
