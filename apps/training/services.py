"""Writes of the training app: files, jobs, their events and cancellation."""
from __future__ import annotations

import uuid
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

import celeryconfig
from apps.accounts.limits import effective_limits
from apps.catalog.selectors import model_get
from apps.catalog.services import model_remove
from apps.core import events
from apps.core.errors import AppError
from apps.core.publishing import enqueue_on_commit, send_task
from apps.vectorstores.chunking import SUPPORTED_EXTENSIONS

from .datasets import resolve_dataset_path
from .models import TrainingEvent, TrainingFile, TrainingJob
from .selectors import training_file_get, training_job_get
from .storage import storage_quota_refusal, training_job_storage_delete

Status = TrainingJob.Status

DEFAULT_HYPERPARAMETERS = {
    "learning_rate": 2e-4, "num_epochs": 3, "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
    "target_modules": None, "batch_size": 4, "gradient_accumulation_steps": 1, "max_seq_length": 512, "seed": 42,
    "checkpoint_every": None,
}


# Purposes of /files: fine-tune datasets (validated in the background), documents for vector stores
# (OpenAI's `assistants` and `user_data`: read when a store embeds them, apps/vectorstores/chunking.py), and
# images and videos for chat (`vision`: checked whole at upload, apps/vision).
FILE_PURPOSES = ("fine-tune", "assistants", "user_data", "vision")


def training_file_create(*, user, upload, purpose: str) -> TrainingFile:
    if purpose not in FILE_PURPOSES:
        raise AppError(f"purpose must be one of {', '.join(FILE_PURPOSES)}.", param="purpose", code="invalid_value")
    if purpose == "vision":
        return _vision_file_create(user=user, upload=upload)
    suffix = ".jsonl"
    if purpose != "fine-tune":
        suffix = Path(upload.name).suffix.lower()
        if suffix not in SUPPORTED_EXTENSIONS:
            raise AppError(f"The file type {suffix or '(none)'} is not supported for purpose '{purpose}'; "
                           f"supported: {', '.join(SUPPORTED_EXTENSIONS)}.", param="file", code="unsupported_file")
    if upload.size > settings.AIHUB_MAX_FILE_BYTES:
        raise AppError(f"The file is {upload.size} bytes; the limit is {settings.AIHUB_MAX_FILE_BYTES}.",
                       status=413, param="file", code="file_too_large")
    file_id = uuid.uuid4()
    directory = Path(settings.AIHUB_FILES_DIR) / str(user.id)
    path = directory / f"{file_id.hex}{suffix}"
    with transaction.atomic():
        # The user's row is locked while checking and storing, so two uploads cannot both take the last room.
        get_user_model().objects.select_for_update().get(pk=user.pk)
        refusal = storage_quota_refusal(user=user, adding=upload.size)
        if refusal:
            raise AppError(refusal, status=413, param="file", code="storage_quota_exceeded")
        directory.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # A document has nothing to validate up front: a vector store reads it when it embeds it.
        record = TrainingFile.objects.create(
            id=file_id, user=user, filename=Path(upload.name).name[:255], purpose=purpose, bytes=upload.size,
            path=str(path), status=TrainingFile.Status.UPLOADED if purpose == "fine-tune" else
            TrainingFile.Status.PROCESSED)
        if purpose == "fine-tune":
            enqueue_on_commit(celeryconfig.VALIDATE_FILE_TASK, args=[str(file_id)])
    return record


def _vision_file_create(*, user, upload) -> TrainingFile:
    """An image or video for chat (apps/vision): checked whole now, so a file id in a request is usable."""
    from apps.vision.images import InvalidMedia
    from apps.vision.services import vision_file_check

    limit = max(settings.AIHUB_VISION_MAX_IMAGE_BYTES, settings.AIHUB_VIDEO_MAX_BYTES)
    if upload.size > limit:
        raise AppError(f"The file is {upload.size} bytes; images and videos may have {limit}.", status=413,
                       param="file", code="file_too_large")
    data = upload.read()
    try:
        kind = vision_file_check(data)
    except InvalidMedia as exc:
        raise AppError(str(exc), param="file", code=exc.code)
    file_id = uuid.uuid4()
    directory = Path(settings.AIHUB_FILES_DIR) / str(user.id)
    path = directory / f"{file_id.hex}.{kind}"
    with transaction.atomic():
        get_user_model().objects.select_for_update().get(pk=user.pk)
        refusal = storage_quota_refusal(user=user, adding=len(data))
        if refusal:
            raise AppError(refusal, status=413, param="file", code="storage_quota_exceeded")
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        try:
            return TrainingFile.objects.create(id=file_id, user=user, filename=Path(upload.name).name[:255],
                                               purpose="vision", bytes=len(data), path=str(path),
                                               status=TrainingFile.Status.PROCESSED, format=kind)
        except BaseException:
            path.unlink(missing_ok=True)
            raise


def training_file_delete(*, user, file_id: str) -> None:
    record = training_file_get(user=user, file_id=file_id)
    Path(record.path).unlink(missing_ok=True)
    record.delete()


def _hyperparameters(data: dict) -> dict:
    values = {name: data.get(name, default) for name, default in DEFAULT_HYPERPARAMETERS.items()}
    return {name: value if value is not None or name in ("target_modules", "checkpoint_every")
            else DEFAULT_HYPERPARAMETERS[name] for name, value in values.items()}


@transaction.atomic
def training_job_create(*, user, api_key, data: dict) -> TrainingJob:
    base = model_get(user=user, key=api_key, model_id=data["base_model"])
    if base.adapter_path:
        raise AppError("Fine-tune a base model, not an adapter.", param="base_model", code="invalid_value")
    if base.kind == "vision":
        raise AppError(f"The model '{base.id}' is a vision model; fine-tuning takes text models.",
                       param="base_model", code="model_not_supported")
    training_file = validation_file = None
    dataset_path = ""
    if data.get("training_file"):
        training_file = training_file_get(user=user, file_id=data["training_file"], param="training_file")
    elif data.get("dataset_path"):
        dataset_path = str(resolve_dataset_path(data["dataset_path"]))
    else:
        raise AppError("Give training_file (an uploaded file id) or dataset_path.", param="training_file",
                       code="invalid_value")
    if data.get("validation_file"):
        validation_file = training_file_get(user=user, file_id=data["validation_file"], param="validation_file")
    for param, file in (("training_file", training_file), ("validation_file", validation_file)):
        if file is not None and file.purpose != "fine-tune":
            raise AppError(f"The file {file.public_id} was uploaded with purpose '{file.purpose}'; training takes "
                           "files of purpose fine-tune.", param=param, code="invalid_value")
    limit = effective_limits(api_key).max_queued_training_jobs
    live = TrainingJob.objects.select_for_update().filter(
        user=user, status__in=[Status.VALIDATING_FILES, Status.QUEUED, Status.RUNNING])
    if limit and len(live) >= limit:
        raise AppError(f"You have {limit} training jobs waiting or running; wait for one to finish.", status=429,
                       type="rate_limit_error", code="rate_limit_exceeded", retry_after=60)
    job = TrainingJob.objects.create(
        user=user, api_key=api_key, name=data.get("name") or "", base_model=base.id,
        training_type=data.get("training_type") or TrainingJob.Type.LORA, training_file=training_file,
        validation_file=validation_file, dataset_path=dataset_path, hyperparameters=_hyperparameters(data),
        suffix=data.get("suffix") or "")
    job_event(job, "Validating training data.")
    enqueue_on_commit(celeryconfig.VALIDATE_JOB_TASK, args=[str(job.id)])
    return job


def fine_tuning_job_create(*, user, api_key, data: dict) -> TrainingJob:
    """OpenAI's fine_tuning.jobs.create (validated FineTuningJobCreateSerializer output) as our job create.

    `hyperparameters` (top level and method.supervised merged) map onto ours, "auto" (None) meaning our
    default; learning_rate_multiplier scales the default learning rate. `lora` carries our own knobs.
    """
    hyperparameters = data.get("hyperparameters") or {}
    ours = {"base_model": data["model"], "training_file": data["training_file"],
            "validation_file": data.get("validation_file"), "suffix": data.get("suffix"), "seed": data.get("seed"),
            "num_epochs": hyperparameters.get("n_epochs"), "batch_size": hyperparameters.get("batch_size"),
            **(data.get("lora") or {})}
    multiplier = hyperparameters.get("learning_rate_multiplier")
    if multiplier is not None:
        ours["learning_rate"] = DEFAULT_HYPERPARAMETERS["learning_rate"] * multiplier
        if not 1e-7 <= ours["learning_rate"] <= 1.0:
            raise AppError(f"learning_rate_multiplier {multiplier:g} gives a learning rate of "
                           f"{ours['learning_rate']:g}; it must be between 1e-7 and 1.",
                           param="hyperparameters.learning_rate_multiplier", code="invalid_value")
    try:
        return training_job_create(user=user, api_key=api_key, data=ours)
    except AppError as error:
        error.param = {"base_model": "model"}.get(error.param, error.param)  # OpenAI's name for it
        raise


def job_event(job: TrainingJob, message: str, *, type: str = "message", data: dict | None = None,
              level: str = "info", final: str | None = None, live: bool = True) -> None:
    """Record an event (API: /events) and, unless `live` is false, append it to the job's live stream
    (websocket). A job that has ended has had its stream's final event: a note about it afterwards (its
    retry) is recorded only, since nothing may follow the final event of a stream (docs/training.md)."""
    event = TrainingEvent.objects.create(job=job, message=message, type=type, data=data, level=level)
    if live:
        payload = {"event": event_body(event), "status": job.status}
        events.EventWriter.continuing(job.id).append(final or "event", **payload)


def event_body(event: TrainingEvent) -> dict:
    return {"id": f"ftevent-{event.id}", "object": "fine_tuning.job.event", "created_at": int(
        event.created_at.timestamp()), "level": event.level, "message": event.message, "type": event.type,
        "data": event.data}


def job_queue(job: TrainingJob) -> None:
    """validating_files -> queued, then the GPU training queue takes it."""
    if TrainingJob.objects.filter(id=job.id, status=Status.VALIDATING_FILES).update(status=Status.QUEUED):
        job.status = Status.QUEUED
        job_event(job, "Training data validated; the job is queued.")
        send_task(celeryconfig.TRAIN_TASK, args=[str(job.id)])


def job_error(*, code: str, message: str, param: str | None = None) -> dict:
    """A failed job's `error`: OpenAI's fine-tuning shape {code, message, param}, which has no `type`
    (the API's error object, apps/core/errors.error_object, does)."""
    return {"code": code, "message": message, "param": param}


def job_finish(job: TrainingJob, status: str, *, from_states, message: str, error: dict | None = None,
               **fields) -> bool:
    """Compare-and-set to a final status, with its final event; False when someone else got there first."""
    changed = TrainingJob.objects.filter(id=job.id, status__in=list(from_states)).update(
        status=status, error=error, finished_at=timezone.now(), status_reason="", **fields)
    if changed:
        job.refresh_from_db()
        job_event(job, message, level="error" if error else "info", data={"error": error} if error else None,
                  final=events.ERROR if status == Status.FAILED else events.DONE)
    return bool(changed)


def training_job_cancel(*, user, job_id: str) -> TrainingJob:
    job = training_job_get(user=user, job_id=job_id)
    if not job.is_finished:
        _job_cancel(job)
        job.refresh_from_db()
    return job


def _job_cancel(job: TrainingJob) -> None:
    # Not started yet: cancelled here. Running: the worker stops at its next step and confirms.
    if not job_finish(job, Status.CANCELLED, from_states=[Status.VALIDATING_FILES, Status.QUEUED],
                      message="The job was cancelled before it started."):
        events.request_cancel_sync(job.id)


@transaction.atomic
def training_job_retry(*, job: TrainingJob) -> TrainingJob:
    """An operator's retry (the admin): a new job with the failed or cancelled one's data and settings.

    A new job rather than the old one re-run: the old one keeps its record (events, error, checkpoints)
    and its attempt counters, which cap redeliveries. The new one is validated again, so data deleted
    since fails it with the usual error. The user's queued-jobs limit is not applied: an operator chose it.
    """
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise AppError(f"Only a failed or cancelled job can be retried; {job.public_id} is {job.status}.",
                       param="job_id", code="invalid_state")
    if job.training_file_id is None and not job.dataset_path:
        raise AppError(f"The training file of {job.public_id} was deleted; nothing to train on.",
                       param="training_file", code="file_not_found")
    retry = TrainingJob.objects.create(
        user=job.user, api_key=job.api_key, name=job.name, base_model=job.base_model,
        training_type=job.training_type, training_file=job.training_file, validation_file=job.validation_file,
        dataset_path=job.dataset_path, hyperparameters=job.hyperparameters, suffix=job.suffix)
    job_event(retry, f"Retry of {job.public_id}; validating training data.", data={"retry_of": job.public_id})
    job_event(job, f"Retried as {retry.public_id}.", data={"retried_as": retry.public_id}, live=False)
    enqueue_on_commit(celeryconfig.VALIDATE_JOB_TASK, args=[str(retry.id)])
    return retry


def training_jobs_cancel(*, api_key_ids: list[int] | None = None, user=None) -> int:
    """Cancel the live jobs of these keys (or of this user): their key was revoked, or the user deactivated.

    Runs once the caller's transaction commits, so a rolled-back revocation stops nothing.
    """
    live = TrainingJob.objects.exclude(status__in=TrainingJob.FINAL)
    live = live.filter(api_key_id__in=api_key_ids) if api_key_ids is not None else live.filter(user=user)
    jobs = list(live)

    def cancel():
        for job in jobs:
            _job_cancel(job)

    transaction.on_commit(cancel)
    return len(jobs)


def training_job_delete(*, user, job_id: str) -> TrainingJob | None:
    """A live job is cancelled (and kept, so its end can be followed); a finished one is deleted.

    Deleting a finished job deletes its fine-tuned model too (catalog, workers, adapter on disk).
    """
    job = training_job_get(user=user, job_id=job_id)
    if not job.is_finished:
        return training_job_cancel(user=user, job_id=job_id)
    if job.fine_tuned_model:
        model_remove(model_id=job.fine_tuned_model)
    training_job_storage_delete(job=job)
    job.delete()
    return None
