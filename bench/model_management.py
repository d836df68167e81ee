"""Benchmark: model load times and the routing decision's cost (issue: model management).

Measures, with the worker's own ModelManager in this process:
  cold load   - the default model (SmolLM2-135M) from the model store into memory,
  warm hit    - asking for it again while it is loaded,
  swap        - evicting another model to make room, then loading the default one;
and, against embedded PostgreSQL + Valkey with worker heartbeats in place,
  routing     - the per-request cost of choosing model and worker (model=auto and an explicit model).

Run: `python bench/model_management.py [--runs 5]`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from stack import django_on_embedded_services


def timed(fn, runs):
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        values.append(time.perf_counter() - started)
    return statistics.median(values)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--route-runs", type=int, default=500)
    args = parser.parse_args()

    with django_on_embedded_services():
        from apps.accounts.services import user_get_or_create
        from apps.catalog.models import ModelEntry
        from apps.catalog.services import model_register
        from apps.catalog.worker_registry import live_workers
        from apps.chat.services import chat_route
        from apps.core.redis import sync_client
        from tests.support.processes import MODEL_CACHE
        from tests.support.tiny_models import build_tiny_chat_model
        from workers.model_manager import ModelManager, ModelSpec

        default = ModelSpec.from_entry(ModelEntry.objects.get(id="smollm2:135m"))
        other = ModelSpec.from_entry(model_register(
            model_id="mid:1m", path=build_tiny_chat_model(MODEL_CACHE / "mid-a", hidden_size=128, layers=4, seed=3)))

        def cold():
            manager = ModelManager(max_models=1, budget="0.9", default_keep_alive=300)
            manager.load(default)

        manager = ModelManager(max_models=1, budget="0.9", default_keep_alive=300)
        manager.load(default)

        def warm():
            with manager.use(default):
                pass

        def swap():
            manager.load(other)    # evicts the default model
            started = time.perf_counter()
            manager.load(default)  # evicts the other one, loads the default: the swap
            swap.values.append(time.perf_counter() - started)
        swap.values = []

        cold_s = timed(cold, args.runs)
        warm_s = timed(warm, 1000)
        for _ in range(args.runs):
            swap()
        swap_s = statistics.median(swap.values)

        # Routing against a realistic catalog and three worker heartbeats.
        for index in range(20):
            model_register(model_id=f"extra-{index}:1m", path=Path(other.path), kind="code" if index % 4 else "chat")
        state = manager.snapshot()
        for name in ("gpu0", "gpu1", "gpu2"):
            sync_client().set(f"aihub:workers:inference@{name}", json.dumps({
                **state, "hostname": f"inference@{name}", "queues": ["gpu.inference"],
                "control_queue": f"worker.inference@{name}", "pid": 1, "reported_at": time.time()}), ex=600)
        user = user_get_or_create(username="bench")
        messages = [{"role": "user", "content": "def add(a, b): return a + b  # fix this python"}]
        route_auto = timed(lambda: chat_route(user=user, requested="auto", messages=messages,
                                              workers=live_workers()), args.route_runs)
        route_explicit = timed(lambda: chat_route(user=user, requested="smollm2:135m", messages=messages,
                                                  workers=live_workers()), args.route_runs)

        print(f"default model smollm2:135m on {manager.device}, p50 of {args.runs} runs:")
        print(f"  cold load                 {cold_s * 1000:9.1f} ms")
        print(f"  warm hit                  {warm_s * 1e6:9.1f} us   ({warm_s / cold_s:.2e} x cold)")
        print(f"  swap (evict + load)       {swap_s * 1000:9.1f} ms   ({swap_s / cold_s:.2f} x cold)")
        print(f"routing decision per request ({args.route_runs} runs, 22 models, 3 workers):")
        print(f"  model=auto                {route_auto * 1000:9.2f} ms")
        print(f"  explicit model            {route_explicit * 1000:9.2f} ms")
        print(f"  auto / cold load          {route_auto / cold_s:.2e}")


if __name__ == "__main__":
    main()
