"""Worker faults: a killed worker never makes a second answer, a retry before the first token, attempt caps,
time limits per task."""
import json
import os
import signal
import time
from contextlib import ExitStack

import httpx
from websockets.sync.client import connect

from aihub_project.embedded import free_port
from apps.chat.models import GenerationRequest, Message
from apps.training.models import TrainingJob
from tests.conftest import RUN_DIR, make_account
from tests.support.processes import ProcessGroup, wait_until_healthy
from tests.test_training import SECRET, _jsonl


def _wait_running(request_id, timeout=30) -> GenerationRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        generation = GenerationRequest.objects.get(id=request_id)
        if generation.state == GenerationRequest.State.RUNNING:
            return generation
        time.sleep(0.05)
    raise AssertionError("the request never started")


def test_a_request_whose_worker_dies_fails_once_and_stores_no_answer(hub, alice, models):
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        ws.send(json.dumps({"type": "chat.completion", "request": {
            "model": models["tiny"], "max_tokens": 3500, "messages": [{"role": "user", "content": "Go on"}]}}))
        request_id = json.loads(ws.recv(timeout=10))["request_id"]
        json.loads(ws.recv(timeout=30))  # a first token: generation is under way
        generation = _wait_running(request_id)
        os.kill(int(generation.worker.rsplit(":", 1)[1]), signal.SIGKILL)  # the worker: one process
        hub.processes.restart("inference")  # as runhub's supervisor does
        events = []
        while not events or events[-1]["type"] == "token":
            events.append(json.loads(ws.recv(timeout=60)))
    error = events[-1]
    assert error["type"] == "error" and error["error"]["code"] == "worker_lost"
    generation.refresh_from_db()
    assert generation.state == GenerationRequest.State.FAILED
    assert generation.error["code"] == "worker_lost"
    assert not Message.objects.filter(conversation_id=generation.conversation_id, role="assistant").exists()

    # The restarted worker (or the sweep, whichever came first) found it running on a dead process and
    # failed it once, without running it again.
    log = hub.processes.log("inference") + hub.processes.log("default")
    assert log.count(f"request {request_id} was running") == 1
    assert f"request {request_id}: " not in log  # no completion was ever logged for it

    # The restarted worker serves the next request.
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "chat.completion", "request": {
            "model": models["tiny"], "max_tokens": 3, "messages": [{"role": "user", "content": "again"}]}}))
        json.loads(ws.recv(timeout=10))
        last = None
        while last is None or last["type"] == "token":
            last = json.loads(ws.recv(timeout=60))
    assert last["type"] == "done"


# Before its first token a request has shown nothing to anyone: a slow prefill of the real default model
# on a long prompt (after a cold start of the worker) leaves a wide moment to kill its worker in.
LONG_PROMPT = [{"role": "user", "content": " ".join(f"line {i} of a long document." for i in range(170))}]


def _kill_before_first_token(hub, request_id, *, attempt: int, timeout=180) -> None:
    """Kill the worker running `request_id` before its first token, then start it again (runhub would)."""
    from apps.core.events import events_key
    from apps.core.redis import sync_client

    deadline = time.monotonic() + timeout
    while True:
        generation = GenerationRequest.objects.get(id=request_id)
        if generation.state == GenerationRequest.State.RUNNING and generation.attempts == attempt:
            break
        assert not generation.is_finished and time.monotonic() < deadline, f"attempt {attempt} never started"
        time.sleep(0.01)
    os.kill(int(generation.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    assert sync_client().xlen(events_key(request_id)) == 0, "the worker had streamed before it was killed"
    hub.processes.restart("inference")


def _long_request(ws, models) -> str:
    assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
    ws.send(json.dumps({"type": "chat.completion", "request": {
        "model": models["default"], "max_tokens": 6, "temperature": 0, "messages": LONG_PROMPT}}))
    return json.loads(ws.recv(timeout=30))["request_id"]


def _rest_of_stream(ws) -> list[dict]:
    events = []
    while not events or events[-1]["type"] == "token":
        events.append(json.loads(ws.recv(timeout=240)))
    return events


def test_a_request_whose_worker_dies_before_its_first_token_is_answered_once(hub, alice, models):
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        request_id = _long_request(ws, models)
        _kill_before_first_token(hub, request_id, attempt=1)
        events = _rest_of_stream(ws)
    assert events[-1]["type"] == "done", events[-1]
    tokens = [e for e in events if e["type"] == "token"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each token once, in order
    generation = GenerationRequest.objects.get(id=request_id)
    assert generation.state == GenerationRequest.State.SUCCEEDED and generation.attempts == 2
    assert generation.error is None
    assert "".join(e["text"] for e in tokens) == generation.completion
    assert Message.objects.filter(generation=generation, role="assistant").count() == 1


def test_a_request_that_kills_its_worker_every_time_ends_with_too_many_attempts(hub, alice, models):
    from django.conf import settings

    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        request_id = _long_request(ws, models)
        for attempt in range(1, settings.AIHUB_TASK_MAX_ATTEMPTS + 1):
            _kill_before_first_token(hub, request_id, attempt=attempt)
        events = _rest_of_stream(ws)
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"]["code"] == "too_many_attempts"
    generation = GenerationRequest.objects.get(id=request_id)
    assert generation.state == GenerationRequest.State.FAILED
    assert generation.attempts == settings.AIHUB_TASK_MAX_ATTEMPTS
    assert not Message.objects.filter(generation=generation).exists()


def test_a_training_job_runs_past_the_time_limit_that_stops_a_generation(models):
    """Limits per task: one worker, whose generations stop after 2 s, trains for longer than that."""
    env = dict(os.environ)
    env.update(REDIS_URL=env["REDIS_URL"].rsplit("/", 1)[0] + "/9", AIHUB_GENERATION_TIME_LIMIT_SECONDS="2")
    processes = ProcessGroup(env, RUN_DIR / "logs")
    port = free_port()
    processes.start_web(port, name="web-limits")
    processes.start_worker("limits", "gpu.inference,gpu.training,default")
    api = f"http://127.0.0.1:{port}/api/v1"
    account = make_account("limits")
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", processes)
        long = httpx.post(f"{api}/chat/completions", headers=account.auth, timeout=120, json={
            "model": models["tiny"], "max_tokens": 4000, "ignore_eos": True, "messages": [{"role": "user",
                                                                                        "content": "Go on"}]})
        assert long.status_code == 504 and long.json()["error"]["code"] == "time_limit_exceeded", long.text

        upload = httpx.post(f"{api}/files", headers=account.auth, timeout=30, data={"purpose": "fine-tune"},
                            files={"file": ("data.jsonl", _jsonl(SECRET * 40))}).json()
        job = httpx.post(f"{api}/training/jobs", headers=account.auth, timeout=30, json={
            "base_model": models["tiny"], "training_file": upload["id"], "batch_size": 1, "num_epochs": 1}).json()
        deadline = time.monotonic() + 300
        while (state := httpx.get(f"{api}/training/jobs/{job['id']}", headers=account.auth).json())["status"] not in (
                "succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, state
            time.sleep(0.5)
    finally:
        processes.stop()
    assert state["status"] == "succeeded", state
    trained = TrainingJob.objects.get(id=job["id"].removeprefix("ftjob-"))
    assert (trained.finished_at - trained.started_at).total_seconds() > 2  # past the generation's limit


def test_a_worker_killed_mid_batch_answers_no_request_twice(hub, models):
    """Several requests in one batch when the worker dies: those that had streamed fail with `worker_lost`,
    the others run again after the restart; none is answered twice, no event is sent twice."""
    account = make_account("mid-batch")
    prompts = [LONG_PROMPT[0]["content"][:n] for n in (3000, 600, 120, 40)]
    with ExitStack() as opened:
        sockets = []
        for prompt in prompts:
            ws = opened.enter_context(connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=account.auth,
                                              max_queue=None))
            assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
            ws.send(json.dumps({"type": "chat.completion", "request": {
                "model": models["default"], "max_tokens": 40, "ignore_eos": True, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}}))
            sockets.append((ws, json.loads(ws.recv(timeout=30))["request_id"]))
        first = json.loads(sockets[-1][0].recv(timeout=120))  # the short prompt streams first
        assert first["type"] == "token", first
        running = [_wait_running(request_id) for _, request_id in sockets]
        os.kill(int(running[0].worker.rsplit(":", 1)[1]), signal.SIGKILL)
        hub.processes.restart("inference")
        outcomes = {}
        for ws, request_id in sockets:
            events = [first] if request_id == sockets[-1][1] else []
            events += _rest_of_stream(ws)
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # each event once, in order
            outcomes[request_id] = events
    for request_id, events in outcomes.items():
        generation = GenerationRequest.objects.get(id=request_id)
        answers = Message.objects.filter(generation=generation, role="assistant").count()
        if events[-1]["type"] == "error":
            assert events[-1]["error"]["code"] == "worker_lost" and any(e["type"] == "token" for e in events)
            assert generation.state == GenerationRequest.State.FAILED and answers == 0
        else:
            assert events[-1]["type"] == "done" and generation.state == GenerationRequest.State.SUCCEEDED
            assert answers == 1 and generation.completion_tokens == 40
            assert "".join(e["text"] for e in events if e["type"] == "token") == generation.completion
    assert outcomes[sockets[-1][1]][-1]["type"] == "error"  # it had streamed: it could not run again
