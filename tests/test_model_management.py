"""Model management against real worker processes: two inference workers with small budgets.

This module runs its own hub on a separate Valkey database (own queues and
heartbeats), sharing PostgreSQL with the session hub: worker "small" has a
budget that fits one mid-size model, worker "large" fits several.
"""
import os
import threading
import time

import httpx
import pytest

from apps.catalog.models import ModelEntry
from apps.catalog.services import model_register
from apps.chat.models import GenerationRequest
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import MODEL_CACHE, ProcessGroup, wait_until_healthy
from tests.support.tiny_models import build_tiny_chat_model

MB = 2**20
HEARTBEAT = 0.5


@pytest.fixture(scope="module")
def mid_models(models):
    """Two ~2.4 MB models (fp32) and a code model; the default model (~650 MB) fits nowhere here."""
    for name in ("mid-a", "mid-b"):
        model_register(model_id=f"{name}:1m", path=build_tiny_chat_model(MODEL_CACHE / name, hidden_size=128,
                                                                         layers=4, seed=3))
    model_register(model_id="tiny:code", kind="code", path=build_tiny_chat_model(MODEL_CACHE / "tiny-chat"))
    return {"a": "mid-a:1m", "b": "mid-b:1m", "code": "tiny:code"}


@pytest.fixture(scope="module")
def pool(mid_models):
    from aihub_project.embedded import free_port

    env = dict(os.environ)
    env["REDIS_URL"] = env["REDIS_URL"].rsplit("/", 1)[0] + "/1"
    env.update(AIHUB_HEARTBEAT_SECONDS=str(HEARTBEAT), MODEL_UNLOAD_TIMEOUT="300", MAX_CONCURRENT_MODELS="3")
    log_dir = RUN_DIR / "logs" / "pool"
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = ProcessGroup(env, log_dir)
    port = free_port()
    processes.start_web(port)
    processes.start_worker("small", "gpu.inference", env={"AIHUB_GPU_MEMORY_BUDGET": str(4 * MB),
                                                          "MODEL_UNLOAD_TIMEOUT": "2"})
    processes.start_worker("large", "gpu.inference", env={"AIHUB_GPU_MEMORY_BUDGET": str(64 * MB)})
    # Training shares the CPU "device" with both inference workers, within a 6 MiB budget.
    processes.start_worker("training", "gpu.training", env={"AIHUB_GPU_MEMORY_BUDGET": str(6 * MB),
                                                            "AIHUB_TRAINING_MEMORY_RETRY_SECONDS": "1"})
    processes.start_worker("default", "default")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, processes)
        yield base_url, processes
    finally:
        processes.stop()


@pytest.fixture(scope="module")
def staff():
    return make_account("ops", staff=True, scopes=["inference", "training", "admin"])


def _status(base_url, staff):
    response = httpx.get(f"{base_url}/api/v1/models/status", headers=staff.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _workers(base_url, staff):
    return {w["hostname"].split("@")[0]: w for w in _status(base_url, staff)["workers"]}


def _loaded(base_url, staff):
    return {name: [m["id"] for m in w["loaded_models"]] for name, w in _workers(base_url, staff).items()}


def _post(base_url, path, account, body):
    return httpx.post(f"{base_url}/api/v1/{path}", json=body, headers=account.auth, timeout=120)


def _unload_everything(base_url, staff, mid_models):
    for model_id in mid_models.values():
        _post(base_url, "models/unload", staff, {"model_id": model_id})


def test_status_reports_each_worker_its_device_memory_and_queues(pool, staff):
    base_url, _ = pool
    workers = _wait_for(lambda: len(_workers(base_url, staff)) == 2 and _workers(base_url, staff))
    small = workers["small"]
    assert small["device"] == "cpu" and small["source"] == "psutil"
    assert small["budget_bytes"] == 4 * MB
    assert small["memory_total_bytes"] > small["memory_used_bytes"] > 0
    assert "gpu.inference" in small["queues"] and small["control_queue"] in small["queues"]
    assert small["loaded_models"] == [] and small["batch"]["running"] == 0
    queues = _status(base_url, staff)["queues"]
    assert queues["gpu.inference"] == 0 and small["control_queue"] in queues


def test_load_and_unload_are_staff_only(pool, staff, alice, mid_models):
    base_url, _ = pool
    response = _post(base_url, "models/load", alice, {"model_id": mid_models["a"]})
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"
    assert _post(base_url, "models/unload", alice, {"model_id": mid_models["a"]}).status_code == 403
    assert httpx.get(f"{base_url}/api/v1/models/status", headers=alice.auth).status_code == 403
    missing = _post(base_url, "models/load", staff, {"model_id": "nope:0"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "keep_alive": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "keep_alive"
    # Only -1 pins: any other negative number is a mistake, not a quiet pin that no idle timer will undo.
    negative = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "keep_alive": -5})
    assert negative.status_code == 400 and negative.json()["error"]["param"] == "keep_alive"
    assert "-1 to pin" in negative.json()["error"]["message"]


def test_a_cold_model_loads_on_the_worker_with_the_most_free_memory_and_requests_follow_it(pool, staff, mid_models):
    base_url, _ = pool
    _wait_for(lambda: len(_workers(base_url, staff)) == 2)
    _unload_everything(base_url, staff, mid_models)
    loaded = _post(base_url, "models/load", staff, {"model_id": mid_models["a"]})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["status"] == "loaded" and body["worker"].startswith("large@")
    assert body["model"]["size_bytes"] > 2 * MB
    assert _loaded(base_url, staff)["large"] == [mid_models["a"]]

    # Affinity: the request goes to the worker that holds the model.
    response = _post(base_url, "chat/completions", staff, {"model": mid_models["a"], "max_tokens": 3,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert "large@" in response.headers["x-aihub-route"] and "holds the model" in response.headers["x-aihub-route"]
    generation = GenerationRequest.objects.get(id=response.headers["x-aihub-request-id"])
    assert generation.worker.startswith("large@")

    listed = httpx.get(f"{base_url}/api/v1/models", headers=staff.auth).json()["data"]
    assert {m["id"]: m["loaded"] for m in listed}[mid_models["a"]] is True

    unloaded = _post(base_url, "models/unload", staff, {"model_id": mid_models["a"]})
    assert unloaded.json() == {"model_id": mid_models["a"], "status": "unloaded", "workers": [body["worker"]]}
    assert _loaded(base_url, staff)["large"] == []
    again = _post(base_url, "models/unload", staff, {"model_id": mid_models["a"]})
    assert again.json()["status"] == "not_loaded"


def test_a_model_that_fits_no_budget_is_refused_not_crashed(pool, staff, models):
    base_url, _ = pool
    refused = _post(base_url, "models/load", staff, {"model_id": models["default"]})
    assert refused.status_code == 507
    assert refused.json()["error"]["code"] == "insufficient_memory"
    chat = _post(base_url, "chat/completions", staff, {"model": models["default"], "max_tokens": 2,
                                                       "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 507 and chat.json()["error"]["code"] == "insufficient_memory"
    # Both workers still serve.
    assert len(_workers(base_url, staff)) == 2


def test_the_least_recently_used_model_is_evicted_to_make_room(pool, staff, mid_models):
    base_url, _ = pool
    _unload_everything(base_url, staff, mid_models)
    small = _workers(base_url, staff)["small"]["hostname"]
    # The small worker's 4 MiB budget holds one mid model (about 2.7 MiB measured, 3.3 MiB estimated).
    first = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "worker": small})
    assert first.status_code == 200, first.text
    second = _post(base_url, "models/load", staff, {"model_id": mid_models["b"], "worker": small})
    assert second.status_code == 200, second.text
    assert _loaded(base_url, staff)["small"] == [mid_models["b"]]
    assert "unloaded mid-a:1m (evicted for mid-b:1m)" in pool[1].log("small")
    # A pinned model is never evicted: the next load is refused instead.
    _post(base_url, "models/load", staff, {"model_id": mid_models["b"], "worker": small, "keep_alive": -1})
    refused = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "worker": small})
    assert refused.status_code == 507 and "pinned" in refused.json()["error"]["message"]
    missing = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "worker": "nobody@nowhere"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "worker_not_found"
    _unload_everything(base_url, staff, mid_models)


def test_a_load_that_needs_a_busy_models_room_waits_for_its_requests_to_end(pool, staff, mid_models):
    base_url, processes = pool
    small = _workers(base_url, staff)["small"]["hostname"]  # room for one mid model
    waits = "mid-b:1m waits up to 30 s for a model in use to finish its requests (mid-a:1m)"
    for _attempt in range(3):  # the load must land while the answer streams (half a second here): retried if not
        seen = processes.log("small").count(waits)
        _unload_everything(base_url, staff, mid_models)
        assert _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "worker": small}).status_code == 200
        answer, loaded = _load_while_answering(base_url, staff, model=mid_models["a"], load=mid_models["b"],
                                               worker=small)
        # Before, this was a 507 at once ("pinned or in use"); now the load waits for the answer to end.
        assert loaded.status_code == 200, loaded.text
        assert (answer.state, answer.completion_tokens) == ("succeeded", 200), answer.error  # not cut short
        assert _loaded(base_url, staff)["small"] == [mid_models["b"]]
        if processes.log("small").count(waits) > seen:
            break
    else:
        raise AssertionError("the load never arrived while the answer was streaming")
    assert "unloaded mid-a:1m (evicted for mid-b:1m)" in processes.log("small")
    _unload_everything(base_url, staff, mid_models)


def _load_while_answering(base_url, staff, *, model, load, worker):
    """Stream an answer from `model`; at its first token, load `load` on `worker`. Returns the answer's row (once
    it ended) and the load's response."""
    streaming, outcome = threading.Event(), {}

    def chat():
        # 200 tokens: what the KV cache budget leaves beside the model on the small worker
        body = {"model": model, "max_tokens": 200, "ignore_eos": True, "stream": True,
                "messages": [{"role": "user", "content": "Go on"}]}
        with httpx.stream("POST", f"{base_url}/api/v1/chat/completions", json=body, headers=staff.auth,
                          timeout=120) as response:
            outcome["request_id"] = response.headers["x-aihub-request-id"]
            for _line in response.iter_lines():
                streaming.set()

    thread = threading.Thread(target=chat)
    thread.start()
    assert streaming.wait(30)
    loaded = _post(base_url, "models/load", staff, {"model_id": load, "worker": worker})
    thread.join(60)
    return GenerationRequest.objects.get(id=outcome["request_id"]), loaded


def test_an_idle_model_is_unloaded_when_its_keep_alive_runs_out(pool, staff, mid_models):
    base_url, _ = pool
    _unload_everything(base_url, staff, mid_models)
    loaded = _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "keep_alive": 1}).json()
    assert loaded["model"]["expires_at"] - loaded["model"]["last_used_at"] == pytest.approx(1, abs=0.01)
    _wait_for(lambda: all(mid_models["a"] not in ids for ids in _loaded(base_url, staff).values()), timeout=5)


def test_models_unused_for_model_unload_timeout_are_unloaded(pool, staff, mid_models):
    base_url, _ = pool
    _unload_everything(base_url, staff, mid_models)
    small = _workers(base_url, staff)["small"]["hostname"]  # MODEL_UNLOAD_TIMEOUT=2 on this worker
    loaded = _post(base_url, "models/load", staff, {"model_id": mid_models["b"], "worker": small}).json()
    assert loaded["model"]["expires_at"] - loaded["model"]["last_used_at"] == pytest.approx(2, abs=0.01)
    assert _loaded(base_url, staff)["small"] == [mid_models["b"]]
    _wait_for(lambda: _loaded(base_url, staff)["small"] == [], timeout=6)
    assert "unloaded mid-b:1m (idle)" in pool[1].log("small")


def test_keep_alive_zero_unloads_after_the_request_and_minus_one_pins(pool, staff, mid_models):
    base_url, _ = pool
    _unload_everything(base_url, staff, mid_models)
    response = _post(base_url, "chat/completions", staff, {
        "model": mid_models["b"], "max_tokens": 2, "keep_alive": 0, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert all(mid_models["b"] not in ids for ids in _loaded(base_url, staff).values())
    pinned = _post(base_url, "models/load", staff, {"model_id": mid_models["b"], "keep_alive": -1}).json()
    assert pinned["model"]["expires_at"] is None
    _post(base_url, "models/unload", staff, {"model_id": mid_models["b"]})


def test_auto_picks_a_code_model_for_code_and_says_why(pool, staff, mid_models):
    base_url, _ = pool
    response = _post(base_url, "chat/completions", staff, {
        "model": "auto", "max_tokens": 2,
        "messages": [{"role": "user", "content": "def add(a, b):\n    return a + b\n# fix this python function"}]})
    assert response.status_code == 200, response.text
    chosen = ModelEntry.objects.get(id=response.json()["model"])
    assert "code" in chosen.capabilities
    assert "task=code" in response.headers["x-aihub-route"]


def test_auto_honours_the_users_preferred_model(pool, staff, mid_models):
    base_url, _ = pool
    assert httpx.patch(f"{base_url}/api/v1/me", json={"preferred_model": mid_models["b"]},
                       headers=staff.auth).json()["preferred_model"] == mid_models["b"]
    response = _post(base_url, "chat/completions", staff, {"model": "auto", "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "Hello!"}]})
    assert response.json()["model"] == mid_models["b"]
    assert "user preference" in response.headers["x-aihub-route"]
    bad = httpx.patch(f"{base_url}/api/v1/me", json={"preferred_model": "nope:0"}, headers=staff.auth)
    assert bad.status_code == 404
    httpx.patch(f"{base_url}/api/v1/me", json={"preferred_model": None}, headers=staff.auth)


def test_training_makes_inference_unload_idle_models_or_waits_queued_with_a_reason(pool, staff, mid_models):
    import json

    base_url, _ = pool
    _unload_everything(base_url, staff, mid_models)
    upload = httpx.post(f"{base_url}/api/v1/files", headers=staff.auth, data={"purpose": "fine-tune"}, files={
        "file": ("d.jsonl", json.dumps({"instruction": "Say yes", "output": "yes"}).encode() * 1 + b"\n")})
    file_id = upload.json()["id"]

    def create():
        response = httpx.post(f"{base_url}/api/v1/training/jobs", headers=staff.auth, json={
            "base_model": mid_models["b"], "training_file": file_id, "num_epochs": 1})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def job(job_id):
        return httpx.get(f"{base_url}/api/v1/training/jobs/{job_id}", headers=staff.auth).json()

    # A pinned model leaves too little room (2.6 MiB held, training mid-b needs ~4.7 of 6): the job waits.
    _post(base_url, "models/load", staff, {"model_id": mid_models["a"], "keep_alive": -1})
    waiting = create()
    queued = _wait_for(lambda: job(waiting)["status_reason"] and job(waiting), timeout=60)
    assert queued["status"] == "queued" and "MiB of device memory" in queued["status_reason"]
    # Once the model goes, the job runs.
    _post(base_url, "models/unload", staff, {"model_id": mid_models["a"]})
    done = _wait_for(lambda: job(waiting)["status"] in ("succeeded", "failed") and job(waiting), timeout=60)
    assert done["status"] == "succeeded", done

    # An idle (unpinned) model is unloaded by the inference worker to make room.
    _post(base_url, "models/load", staff, {"model_id": mid_models["a"]})
    evicting = create()
    done = _wait_for(lambda: job(evicting)["status"] in ("succeeded", "failed") and job(evicting), timeout=60)
    assert done["status"] == "succeeded", done
    events = httpx.get(f"{base_url}/api/v1/training/jobs/{evicting}/events", headers=staff.auth).json()["data"]
    assert any(f"unloaded idle models to make room: {mid_models['a']}" in e["message"] for e in events)
    assert all(mid_models["a"] not in ids for ids in _loaded(base_url, staff).values())


def test_a_worker_that_stops_reporting_drops_out_of_status(pool, staff):
    base_url, processes = pool
    _wait_for(lambda: "small" in _workers(base_url, staff))
    processes.kill("small")
    started = time.monotonic()
    _wait_for(lambda: "small" not in _workers(base_url, staff), timeout=10)
    assert time.monotonic() - started <= 3 * HEARTBEAT + 1
