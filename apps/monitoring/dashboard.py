"""What the operations dashboard (the admin index, apps/monitoring/admin_site.py) shows, read in bounded time.

Live state comes from where the API already reads it: worker heartbeats and
queue depths (apps/catalog/worker_registry.py). Request figures come from the
rows of the last hour only (`created_at` is indexed, so the cost follows the
last hour's traffic, not the size of the table); training from the running
and queued jobs. docs/operations.md says what each panel means.
"""
from __future__ import annotations

import time
from datetime import timedelta

from django.db.models import Aggregate, Count, FloatField, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from apps.catalog.models import ModelEntry
from apps.catalog.worker_registry import WorkerState, known_queues, live_workers, queue_depths
from apps.chat.models import GenerationRequest
from apps.training.models import TrainingJob

WINDOW = timedelta(hours=1)
RECENT_ERRORS = 10
ACTIVE_JOBS = 20
State = GenerationRequest.State


class Percentile(Aggregate):
    """PostgreSQL's `percentile_cont(f) WITHIN GROUP (ORDER BY x)`: exact, computed in the database."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def _share(part: int | None, whole: int | None) -> float:
    return round(100 * part / whole, 1) if part and whole else 0.0


def _worker_view(worker: WorkerState, now: float) -> dict:
    batch = worker.raw.get("batch") or {}
    loaded = []
    for model in sorted(worker.loaded.values(), key=lambda m: m["id"]):
        expires_at = model.get("expires_at")
        loaded.append({
            "id": model["id"], "size_bytes": model.get("size_bytes") or 0, "in_use": model.get("in_use", 0),
            "pinned": expires_at is None,
            "keep_alive_left_seconds": None if expires_at is None else max(0.0, expires_at - now),
            "idle_seconds": max(0.0, now - model["last_used_at"]) if model.get("last_used_at") else None,
            "running": (batch.get("running_by_model") or {}).get(model["id"], 0),
        })
    return {
        "hostname": worker.hostname, "device": worker.device, "device_name": worker.raw.get("name"),
        "memory_total_bytes": worker.memory_total_bytes, "memory_used_bytes": worker.memory_used_bytes,
        "budget_bytes": worker.budget_bytes, "models_bytes": worker.models_bytes,
        "memory_used_percent": _share(worker.memory_used_bytes, worker.memory_total_bytes),
        "budget_percent": _share(worker.budget_bytes, worker.memory_total_bytes),
        "models_percent_of_budget": _share(worker.models_bytes, worker.budget_bytes),
        "max_models": worker.raw.get("max_models"),
        "running": batch.get("running", 0), "waiting": batch.get("waiting", 0),
        "cache_bytes": batch.get("cache_bytes", 0),
        "beat_age_seconds": max(0.0, now - worker.raw["reported_at"]) if worker.raw.get("reported_at") else None,
        "loaded": loaded,
    }


def _model_figures(since) -> list[dict]:
    """Per model over the window: requests, errors, time to first token percentiles (cache hits left out)."""
    rows = (GenerationRequest.objects.filter(created_at__gte=since).values("model").annotate(
        requests=Count("id"),
        failed=Count("id", filter=Q(state=State.FAILED)),
        finished=Count("id", filter=Q(state__in=[State.SUCCEEDED, State.FAILED])),
        ttft_p50=Percentile("time_to_first_token_ms", 0.5, filter=Q(cache_hit=False)),
        ttft_p95=Percentile("time_to_first_token_ms", 0.95, filter=Q(cache_hit=False)),
    ).order_by("model"))
    minutes = WINDOW.total_seconds() / 60
    return [{
        "model": row["model"], "requests": row["requests"],
        "requests_per_minute": round(row["requests"] / minutes, 2),
        "ttft_p50_ms": row["ttft_p50"], "ttft_p95_ms": row["ttft_p95"],
        "failed": row["failed"], "error_rate_percent": _share(row["failed"], row["finished"]),
    } for row in rows]


def _requests_per_minute(since, now) -> dict:
    """Chart data: one point per minute of the window and per model (zero where nothing came)."""
    start = since.replace(second=0, microsecond=0)
    slots = [start + timedelta(minutes=i) for i in range(int(WINDOW.total_seconds() // 60) + 1)]
    counts: dict[str, dict] = {}
    rows = (GenerationRequest.objects.filter(created_at__gte=start).annotate(minute=TruncMinute("created_at"))
            .values("model", "minute").annotate(n=Count("id")).order_by())
    for row in rows:
        counts.setdefault(row["model"], {})[row["minute"]] = row["n"]
    return {
        "labels": [timezone.localtime(slot).strftime("%H:%M") for slot in slots],
        "series": [{"model": model, "counts": [per_minute.get(slot, 0) for slot in slots]}
                   for model, per_minute in sorted(counts.items())],
    }


def _recent_errors(since) -> list[dict]:
    rows = (GenerationRequest.objects.filter(state=State.FAILED, created_at__gte=since)
            .order_by("-created_at").values("id", "model", "worker", "error", "created_at")[:RECENT_ERRORS])
    return [{"id": row["id"], "model": row["model"], "worker": row["worker"], "created_at": row["created_at"],
             "code": (row["error"] or {}).get("code") or "", "message": (row["error"] or {}).get("message", "")}
            for row in rows]


def _training_jobs() -> list[dict]:
    active = (TrainingJob.Status.RUNNING, TrainingJob.Status.QUEUED, TrainingJob.Status.VALIDATING_FILES)
    jobs = (TrainingJob.objects.filter(status__in=active).select_related("user")
            .only("id", "status", "status_reason", "base_model", "step", "total_steps", "loss", "eta_seconds",
                  "worker", "created_at", "user__username").order_by("created_at")[:ACTIVE_JOBS])
    return [{
        "id": job.public_id, "pk": job.pk, "status": job.status, "status_reason": job.status_reason,
        "base_model": job.base_model, "user": job.user.username, "step": job.step, "total_steps": job.total_steps,
        "progress_percent": _share(job.step, job.total_steps), "loss": job.loss, "eta_seconds": job.eta_seconds,
        "worker": job.worker,
    } for job in jobs]


def dashboard_read() -> dict:
    """Everything on the dashboard, as plain data (the template and the polling endpoint share it)."""
    now = timezone.now()
    since = now - WINDOW
    workers = live_workers()
    loaded_ids = {model_id for w in workers for model_id in w.loaded}
    return {
        "generated_at": now,
        "workers": [_worker_view(w, time.time()) for w in workers],
        "queues": queue_depths(known_queues(workers)),
        "requests": {  # both counts are bounded: queued rows are capped by AIHUB_MAX_QUEUE
            "queued": GenerationRequest.objects.filter(state=State.QUEUED).count(),
            "running": GenerationRequest.objects.filter(state=State.RUNNING).count(),
        },
        "models": _model_figures(since),
        "requests_per_minute": _requests_per_minute(since, now),
        "recent_errors": _recent_errors(since),
        "training_jobs": _training_jobs(),
        # What the load form offers: enabled models not loaded anywhere (the catalog is small).
        "loadable": list(ModelEntry.objects.filter(enabled=True).exclude(id__in=loaded_ids)
                         .order_by("id").values_list("id", flat=True)),
    }
