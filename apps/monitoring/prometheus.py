"""Our `aihub_*` Prometheus series, computed at scrape time from shared state.

Request, token and latency series come from the request records in
PostgreSQL and worker series from the heartbeats in Redis, so every web
process exposes the same totals whichever process or worker served a request
(worker-side figures reach /metrics without a push gateway). HTTP-level series
come from django-prometheus's middleware.
"""
from __future__ import annotations

import logging

from django.db.models import Count, Q, Sum
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class AIHubCollector:
    def collect(self):
        try:
            yield from self._requests()
            yield from self._workers()
            yield from self._training()
        except Exception:  # noqa: BLE001 - a scrape must not fail because one source is down
            logger.exception("collecting aihub metrics failed")

    def describe(self):
        return []  # collected lazily: never query at registration time

    def _requests(self):
        from apps.catalog.workers import known_queues, live_workers, queue_depths
        from apps.chat.models import GenerationRequest

        rows = GenerationRequest.objects.values("model", "state").annotate(
            n=Count("id"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"),
            hits=Count("id", filter=Q(cache_hit=True)))
        requests = CounterMetricFamily("aihub_requests", "Chat completion requests by model and final state",
                                       labels=["model", "state"])
        tokens = CounterMetricFamily("aihub_tokens", "Tokens processed", labels=["model", "kind"])
        hits = CounterMetricFamily("aihub_cache_hits", "Requests answered from the response cache", labels=["model"])
        per_model: dict[str, list[int]] = {}
        for row in rows:
            requests.add_metric([row["model"], row["state"]], row["n"])
            totals = per_model.setdefault(row["model"], [0, 0, 0])
            totals[0] += row["prompt"] or 0
            totals[1] += row["completion"] or 0
            totals[2] += row["hits"]
        for model, (prompt, completion, cache_hits) in per_model.items():
            tokens.add_metric([model, "prompt"], prompt)
            tokens.add_metric([model, "completion"], completion)
            hits.add_metric([model], cache_hits)
        yield requests
        yield tokens
        yield hits
        for field, name, help_text in (
                ("time_to_first_token_ms", "aihub_time_to_first_token_seconds", "From enqueue to the first token"),
                ("total_ms", "aihub_request_duration_seconds", "From enqueue to the stored answer")):
            yield self._histogram(GenerationRequest, field, name, help_text)
        depth = GaugeMetricFamily("aihub_queue_depth", "Messages waiting per queue", labels=["queue"])
        for queue, count in queue_depths(known_queues(live_workers())).items():
            depth.add_metric([queue], count or 0)
        yield depth

    def _histogram(self, model_class, field: str, name: str, help_text: str):
        buckets = {f"b{i}": Count("id", filter=Q(**{f"{field}__lte": bound * 1000}))
                   for i, bound in enumerate(LATENCY_BUCKETS)}
        rows = model_class.objects.filter(**{f"{field}__isnull": False}).values("model").annotate(
            n=Count("id"), total=Sum(field), **buckets)
        family = HistogramMetricFamily(name, help_text, labels=["model"])
        for row in rows:
            cumulative = [(str(bound), row[f"b{i}"]) for i, bound in enumerate(LATENCY_BUCKETS)]
            cumulative.append(("+Inf", row["n"]))
            family.add_metric([row["model"]], cumulative, sum_value=(row["total"] or 0) / 1000)
        return family

    def _training(self):
        from apps.training.models import TrainingJob

        jobs = GaugeMetricFamily("aihub_training_jobs", "Fine-tuning jobs by status", labels=["status"])
        for row in TrainingJob.objects.values("status").annotate(n=Count("id")):
            jobs.add_metric([row["status"]], row["n"])
        progress = GaugeMetricFamily("aihub_training_progress_ratio", "Steps done / total steps of running jobs",
                                     labels=["job", "model"])
        loss = GaugeMetricFamily("aihub_training_loss", "Latest training loss of running jobs", labels=["job"])
        for job in TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING):
            progress.add_metric([job.public_id, job.base_model], job.step / job.total_steps if job.total_steps else 0)
            if job.loss is not None:
                loss.add_metric([job.public_id], job.loss)
        yield from (jobs, progress, loss)

    def _workers(self):
        from apps.catalog.workers import live_workers

        used = GaugeMetricFamily("aihub_worker_memory_used_bytes", "Device memory in use", labels=["worker", "device"])
        total = GaugeMetricFamily("aihub_worker_memory_total_bytes", "Device memory", labels=["worker", "device"])
        models = GaugeMetricFamily("aihub_worker_models_bytes", "Memory held by loaded models", labels=["worker"])
        loaded = GaugeMetricFamily("aihub_worker_loaded_models", "Models loaded", labels=["worker"])
        for worker in live_workers():
            used.add_metric([worker.hostname, worker.device], worker.memory_used_bytes)
            total.add_metric([worker.hostname, worker.device], worker.memory_total_bytes)
            models.add_metric([worker.hostname], worker.models_bytes)
            loaded.add_metric([worker.hostname], len(worker.loaded))
        yield from (used, total, models, loaded)
