"""Our `aihub_*` Prometheus series, read at scrape time from shared state, in bounded time.

Request, token and latency series come from counters the hub maintains in
Redis as requests end (apps/monitoring/counters.py): one HGETALL, whatever
the size of the requests table. Worker series come from the heartbeats in
Redis, so every web process exposes the same totals whichever process or
worker served a request. Training series are grouped by base model and status
over the (small) jobs table. HTTP-level series come from django-prometheus's
middleware.

No label carries user data: no fine-tuned model id (counted as `ft:<base>`),
no job id, no username.
"""
from __future__ import annotations

import logging

from django.conf import settings
from django.db.models import Count
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import celeryconfig

from .counters import LATENCY_BUCKETS, model_label, request_metrics_read

logger = logging.getLogger(__name__)

HISTOGRAM_FAMILIES = {
    "ttft": ("aihub_time_to_first_token_seconds", "From enqueue to the first token"),
    "duration": ("aihub_request_duration_seconds", "From enqueue to the stored answer"),
}


class AIHubCollector:
    def collect(self):
        # Each source on its own: a scrape must not lose every series because one source is down.
        for source in (self._requests, self._queues, self._workers, self._training, self._disk):
            try:
                yield from list(source())
            except Exception:  # noqa: BLE001
                logger.exception("collecting aihub metrics from %s failed", source.__name__)

    def describe(self):
        return []  # collected lazily: never query at registration time

    def _requests(self):
        counters = request_metrics_read()
        requests = CounterMetricFamily("aihub_requests", "Finished requests (chat completions, embeddings) by model "
                                       "and state", labels=["model", "state"])
        tokens = CounterMetricFamily("aihub_tokens", "Tokens processed", labels=["model", "kind"])
        hits = CounterMetricFamily("aihub_cache_hits", "Requests answered from the response cache", labels=["model"])
        errors = CounterMetricFamily("aihub_request_errors", "Failed requests by model and error code",
                                     labels=["model", "code"])
        histograms: dict[str, dict[str, dict]] = {name: {} for name in HISTOGRAM_FAMILIES}
        for parts, value in sorted(counters.items()):
            kind = parts[0]
            if kind == "requests":
                requests.add_metric([parts[1], parts[2]], value)
            elif kind == "tokens":
                tokens.add_metric([parts[1], parts[2]], value)
            elif kind == "cache_hits":
                hits.add_metric([parts[1]], value)
            elif kind == "errors":
                errors.add_metric([parts[1], parts[2]], value)
            elif kind in histograms:
                histograms[kind].setdefault(parts[1], {})[int(parts[2])] = value
            elif kind.endswith("_sum") and kind[:-4] in histograms:
                histograms[kind[:-4]].setdefault(parts[1], {})["sum"] = value
        yield from (requests, tokens, hits, errors)
        for name, per_model in histograms.items():
            family = HistogramMetricFamily(*HISTOGRAM_FAMILIES[name], labels=["model"])
            for model, observed in per_model.items():
                # Stored per bucket; Prometheus wants cumulative counts ending with +Inf.
                cumulative, running = [], 0.0
                for index, bound in enumerate((*LATENCY_BUCKETS, "+Inf")):
                    running += observed.get(index, 0.0)
                    cumulative.append((str(bound), running))
                family.add_metric([model], cumulative, sum_value=observed.get("sum", 0.0))
            yield family

    def _queues(self):
        from apps.catalog.worker_registry import known_queues, live_workers, queue_depths
        from apps.chat.models import GenerationRequest

        from .health import queue_consumers

        depth = GaugeMetricFamily("aihub_queue_depth", "Messages waiting per queue", labels=["queue"])
        for queue, count in queue_depths(known_queues(live_workers())).items():
            depth.add_metric([queue], count or 0)
        # The shared queues only: a worker's own queue comes and goes with the worker.
        consumers = queue_consumers()
        workers = GaugeMetricFamily("aihub_queue_consumers", "Live workers consuming each shared queue (0: work "
                                    "sent there waits)", labels=["queue"])
        for queue in (celeryconfig.DEFAULT_QUEUE, *celeryconfig.GPU_QUEUES):
            workers.add_metric([queue], len(consumers.get(queue, [])))
        # What AIHUB_MAX_QUEUE compares (apps/chat/services.queue_check): queued request rows. An indexed count
        # bounded by that limit, since requests beyond it are refused, so the scrape stays cheap.
        waiting = GaugeMetricFamily("aihub_requests_waiting", "Requests queued for a GPU, not started yet")
        waiting.add_metric([], GenerationRequest.objects.filter(state=GenerationRequest.State.QUEUED).count())
        limit = GaugeMetricFamily("aihub_requests_waiting_limit", "AIHUB_MAX_QUEUE: queued requests beyond it are "
                                  "refused with 503 queue_full (0: unbounded)")
        limit.add_metric([], settings.AIHUB_MAX_QUEUE)
        yield from (depth, workers, waiting, limit)

    def _training(self):
        from apps.training.models import TrainingJob

        jobs = GaugeMetricFamily("aihub_training_jobs", "Fine-tuning jobs by base model and status",
                                 labels=["model", "status"])
        by_label: dict[tuple[str, str], int] = {}
        for row in TrainingJob.objects.values("base_model", "status").annotate(n=Count("id")):
            # Every status of a model, zeros included: a first failure is then a change of a series that
            # existed, which is what an alert on delta() sees (deploy/prometheus/alerts.yml).
            for status in TrainingJob.Status.values:
                by_label.setdefault((model_label(row["base_model"]), status), 0)
            label = (model_label(row["base_model"]), row["status"])
            by_label[label] += row["n"]
        for label, count in sorted(by_label.items()):
            jobs.add_metric(list(label), count)
        progress = GaugeMetricFamily("aihub_training_progress_ratio",
                                     "Mean steps done / total steps of running jobs, per base model",
                                     labels=["model"])
        loss = GaugeMetricFamily("aihub_training_loss", "Mean latest training loss of running jobs, per base model",
                                 labels=["model"])
        running = {}
        for job in TrainingJob.objects.filter(status=TrainingJob.Status.RUNNING).only(
                "base_model", "step", "total_steps", "loss"):
            entry = running.setdefault(model_label(job.base_model), {"ratios": [], "losses": []})
            entry["ratios"].append(job.step / job.total_steps if job.total_steps else 0.0)
            if job.loss is not None:
                entry["losses"].append(job.loss)
        for model, entry in sorted(running.items()):
            progress.add_metric([model], sum(entry["ratios"]) / len(entry["ratios"]))
            if entry["losses"]:
                loss.add_metric([model], sum(entry["losses"]) / len(entry["losses"]))
        yield from (jobs, progress, loss)

    def _workers(self):
        from apps.catalog.worker_registry import live_workers

        used = GaugeMetricFamily("aihub_worker_memory_used_bytes", "Device memory in use", labels=["worker", "device"])
        total = GaugeMetricFamily("aihub_worker_memory_total_bytes", "Device memory", labels=["worker", "device"])
        models = GaugeMetricFamily("aihub_worker_models_bytes", "Memory held by loaded models", labels=["worker"])
        loaded = GaugeMetricFamily("aihub_worker_loaded_models", "Models loaded", labels=["worker"])
        batch = {
            "running": GaugeMetricFamily("aihub_worker_running_sequences",
                                         "Requests in the worker's running batch", labels=["worker"]),
            "waiting": GaugeMetricFamily("aihub_worker_waiting_sequences",
                                         "Requests the worker holds that wait for a batch row or cache memory",
                                         labels=["worker"]),
            "cache_bytes": GaugeMetricFamily("aihub_worker_kv_cache_bytes", "KV cache held by the running batch",
                                             labels=["worker"]),
            "cache_reserved_bytes": GaugeMetricFamily(
                "aihub_worker_kv_cache_reserved_bytes",
                "KV cache the running batch may grow to (every row to its max_tokens)", labels=["worker"]),
            "cache_budget_bytes": GaugeMetricFamily(
                "aihub_worker_kv_cache_budget_bytes", "Memory budget left for the KV cache beside the loaded models",
                labels=["worker"]),
        }
        for worker in live_workers():
            used.add_metric([worker.hostname, worker.device], worker.memory_used_bytes)
            total.add_metric([worker.hostname, worker.device], worker.memory_total_bytes)
            models.add_metric([worker.hostname], worker.models_bytes)
            loaded.add_metric([worker.hostname], len(worker.loaded))
            figures = worker.raw.get("batch") or {}
            for name, family in batch.items():
                family.add_metric([worker.hostname], figures.get(name, 0))
        yield from (used, total, models, loaded, *batch.values())

    def _disk(self):
        from .health import disk_space

        disk = disk_space()
        free = GaugeMetricFamily("aihub_disk_free_bytes", "Free space where the hub keeps its state (AIHUB_VAR_DIR)",
                                 labels=["path"])
        free.add_metric(["var"], disk["free_bytes"])
        total = GaugeMetricFamily("aihub_disk_total_bytes", "Size of the filesystem holding AIHUB_VAR_DIR",
                                  labels=["path"])
        total.add_metric(["var"], disk["total_bytes"])
        yield from (free, total)
