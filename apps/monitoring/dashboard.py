"""What the operations dashboard (the admin index, apps/monitoring/admin_site.py) shows, read in bounded time.

Live state comes from where the API already reads it: worker heartbeats and
queue depths (apps/catalog/worker_registry.py). Request figures (requests per
minute, time to first token percentiles, error rates) come from the
per-minute counters the hub keeps as requests end (apps/monitoring/counters.py),
never from a scan of the requests table, so they cost the same whatever the
traffic; the table is read only for the recent failures (an index on state
and creation time) and the counts of queued and running requests (bounded by
AIHUB_MAX_QUEUE and the batch sizes). Training comes from the active jobs.
docs/operations.md says what each panel means.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.utils import timezone

from apps.catalog.models import ModelEntry
from apps.catalog.worker_registry import WorkerState, known_queues, live_workers, queue_depths
from apps.chat.models import GenerationRequest
from apps.monitoring.counters import MINUTE_TTFT_BOUNDS_MS, minutes_read
from apps.training.models import TrainingJob

WINDOW_MINUTES = 60
WINDOW = timedelta(minutes=WINDOW_MINUTES)
RECENT_ERRORS = 10
ACTIVE_JOBS = 20
State = GenerationRequest.State


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


def bucket_quantile(counts: list[float], fraction: float) -> float | None:
    """The `fraction` quantile of values counted per bucket of MINUTE_TTFT_BOUNDS_MS (linear in its bucket)."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = fraction * total, 0.0
    bounds = (*MINUTE_TTFT_BOUNDS_MS, MINUTE_TTFT_BOUNDS_MS[-1])  # the overflow bucket reads as the last bound
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            low = bounds[index - 1] if index else 0.0
            return low + (bounds[index] - low) * (rank - seen) / count
        seen += count
    return bounds[-1]


def _recent_figures(now: float) -> tuple[list[dict], dict]:
    """Per model over the last hour, from the per-minute counters (apps/monitoring/counters.py):
    requests, failures, time to first token percentiles, and one point per minute for the chart."""
    current = int(now) - int(now) % 60
    starts = [current - 60 * i for i in range(WINDOW_MINUTES - 1, -1, -1)]  # this minute and the 59 before
    per_minute: dict[str, list[int]] = {}
    states: dict[str, dict[str, float]] = {}
    minutes, ttft_buckets = minutes_read(starts)
    for index, minute in enumerate(minutes):
        for (kind, model, *rest), value in minute.items():
            if kind == "requests":
                per_minute.setdefault(model, [0] * len(starts))[index] += int(value)
                states.setdefault(model, {}).setdefault(rest[0], 0)
                states[model][rest[0]] += value
    ttft: dict[str, list[float]] = {}
    for (_, model, bucket), value in ttft_buckets.items():
        ttft.setdefault(model, [0.0] * (len(MINUTE_TTFT_BOUNDS_MS) + 1))[int(bucket)] += value
    figures = []
    for model in sorted(per_minute):
        by_state, buckets = states[model], ttft.get(model, [])
        failed = int(by_state.get(State.FAILED, 0))
        requests = int(sum(by_state.values()))
        figures.append({
            "model": model, "requests": requests,
            "requests_per_minute": round(requests / WINDOW_MINUTES, 2),
            "ttft_p50_ms": bucket_quantile(buckets, 0.5), "ttft_p95_ms": bucket_quantile(buckets, 0.95),
            "failed": failed, "error_rate_percent": _share(failed, failed + int(by_state.get(State.SUCCEEDED, 0))),
        })
    chart = {
        "labels": [datetime.fromtimestamp(start, tz=dt_timezone.utc).astimezone(
            timezone.get_current_timezone()).strftime("%H:%M") for start in starts],
        "series": [{"model": model, "counts": counts} for model, counts in sorted(per_minute.items())],
    }
    return figures, chart


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
    figures, chart = _recent_figures(time.time())
    loaded_ids = {model_id for w in workers for model_id in w.loaded}
    return {
        "generated_at": now,
        "workers": [_worker_view(w, time.time()) for w in workers],
        "queues": queue_depths(known_queues(workers)),
        "requests": {  # both counts are bounded: queued rows are capped by AIHUB_MAX_QUEUE
            "queued": GenerationRequest.objects.filter(state=State.QUEUED).count(),
            "running": GenerationRequest.objects.filter(state=State.RUNNING).count(),
        },
        "models": figures,
        "requests_per_minute": chart,
        "recent_errors": _recent_errors(since),
        "training_jobs": _training_jobs(),
        # What the load form offers: enabled models not loaded anywhere (the catalog is small).
        "loadable": list(ModelEntry.objects.filter(enabled=True).exclude(id__in=loaded_ids)
                         .order_by("id").values_list("id", flat=True)),
    }
