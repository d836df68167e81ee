"""System metrics: this host, every worker's device (from heartbeats), queues, requests in flight."""
from __future__ import annotations

import os

import psutil

from apps.catalog.worker_registry import known_queues, live_workers, queue_depths
from apps.chat.models import GenerationRequest


def system_metrics() -> dict:
    workers = live_workers()
    memory = psutil.virtual_memory()
    gpus = [{
        "worker": w.hostname, "device": w.device, "name": w.raw.get("name"),
        "memory_total_bytes": w.memory_total_bytes, "memory_used_bytes": w.memory_used_bytes,
        "utilization_percent": w.raw.get("utilization_percent"), "temperature_c": w.raw.get("temperature_c"),
    } for w in workers if w.device_type == "cuda"]
    states = GenerationRequest.State
    return {
        "host": {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()),
            "memory_total_bytes": memory.total,
            "memory_used_bytes": memory.total - memory.available,
        },
        "gpus": gpus,
        "gpu_note": None if gpus else "no worker reports a GPU: models run on the CPU",
        "workers": [{
            "hostname": w.hostname, "device": w.device, "memory_total_bytes": w.memory_total_bytes,
            "memory_used_bytes": w.memory_used_bytes, "budget_bytes": w.budget_bytes,
            "models_bytes": w.models_bytes, "loaded_models": sorted(w.loaded),
            "batch": w.raw.get("batch"),
        } for w in workers],
        "queues": queue_depths(known_queues(workers)),
        "requests": {
            "queued": GenerationRequest.objects.filter(state=states.QUEUED).count(),
            "running": GenerationRequest.objects.filter(state=states.RUNNING).count(),
        },
    }
