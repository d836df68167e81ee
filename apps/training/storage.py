"""Disk a user fills: uploaded files plus training checkpoints, within one quota; checkpoint pruning and removal.

The quota is a SUM over rows (TrainingFile.bytes, TrainingCheckpoint.bytes),
never a walk of the disk: cheap enough to run on every upload and checkpoint.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db.models import Sum

from .models import TrainingCheckpoint, TrainingFile, TrainingJob


def user_storage_used(*, user) -> int:
    files = TrainingFile.objects.filter(user=user).aggregate(total=Sum("bytes"))["total"] or 0
    checkpoints = TrainingCheckpoint.objects.filter(job__user=user).aggregate(total=Sum("bytes"))["total"] or 0
    return files + checkpoints


def storage_quota_refusal(*, user, adding: int, freeing: int = 0) -> str | None:
    """Why storing `adding` more bytes (while `freeing` others go) exceeds the user's quota; None when it fits."""
    quota = settings.AIHUB_USER_STORAGE_QUOTA_BYTES
    if not quota:
        return None
    used = user_storage_used(user=user)
    if used - freeing + adding <= quota:
        return None
    return (f"Storing {adding} more bytes would exceed your storage quota: {used} of {quota} bytes are used "
            "by uploaded files and training checkpoints. Delete files or finished jobs to make room.")


def checkpoint_quota_refusal(*, job: TrainingJob, adding: int) -> str | None:
    """As storage_quota_refusal, for one more checkpoint of `job`: the ones it will push out are not counted."""
    keep = settings.AIHUB_TRAINING_KEEP_CHECKPOINTS
    freeing = 0
    if keep > 0:
        freeing = job.checkpoints.order_by("-step")[keep - 1:].aggregate(total=Sum("bytes"))["total"] or 0
    return storage_quota_refusal(user=job.user, adding=adding, freeing=freeing)


def directory_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())


def _remove_run_path(path: Path) -> None:
    """rmtree, but only inside AIHUB_TRAINING_DIR: a row's path is never trusted to point elsewhere."""
    root = Path(settings.AIHUB_TRAINING_DIR).resolve()
    resolved = path.resolve()
    if resolved != root and resolved.is_relative_to(root):
        shutil.rmtree(resolved, ignore_errors=True)


def checkpoints_prune(*, job: TrainingJob) -> int:
    """Keep the newest AIHUB_TRAINING_KEEP_CHECKPOINTS of a job (0: all); older directories, then rows, go.

    Directory first: a crash in between leaves a row without files, which
    resume skips and the quota over-counts, never files nobody accounts for.
    """
    keep = settings.AIHUB_TRAINING_KEEP_CHECKPOINTS
    if keep <= 0:
        return 0
    old = list(job.checkpoints.order_by("-step")[keep:])
    for checkpoint in old:
        _remove_run_path(Path(checkpoint.path))
    TrainingCheckpoint.objects.filter(id__in=[checkpoint.id for checkpoint in old]).delete()
    return len(old)


def training_run_dir(job: TrainingJob) -> Path:
    return Path(settings.AIHUB_TRAINING_DIR) / job.id.hex


def training_job_storage_delete(*, job: TrainingJob) -> None:
    """A deleted job's run directory (every checkpoint) goes with it; its checkpoint rows go by cascade."""
    _remove_run_path(training_run_dir(job))
