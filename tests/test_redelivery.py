"""A worker killed mid-generation: the redelivered message never produces a second answer."""
import json
import os
import signal
import time

from websockets.sync.client import connect

from apps.chat.models import GenerationRequest, Message


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
        pool_pid = int(generation.worker.rsplit(":", 1)[1])
        os.kill(pool_pid, signal.SIGKILL)
        events = []
        while not events or events[-1]["type"] == "token":
            events.append(json.loads(ws.recv(timeout=60)))
    error = events[-1]
    assert error["type"] == "error" and error["error"]["code"] == "worker_lost"
    generation.refresh_from_db()
    assert generation.state == GenerationRequest.State.FAILED
    assert generation.error["code"] == "worker_lost"
    assert not Message.objects.filter(conversation_id=generation.conversation_id, role="assistant").exists()

    # The message was redelivered exactly to the compare-and-set, which refused to run it again.
    log = hub.processes.log("inference")
    assert log.count(f"request {request_id} was running") == 1
    assert f"request {request_id}: " not in log  # no completion was ever logged for it

    # A fresh pool process serves the next request.
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        json.loads(ws.recv(timeout=10))
        ws.send(json.dumps({"type": "chat.completion", "request": {
            "model": models["tiny"], "max_tokens": 3, "messages": [{"role": "user", "content": "again"}]}}))
        json.loads(ws.recv(timeout=10))
        last = None
        while last is None or last["type"] == "token":
            last = json.loads(ws.recv(timeout=60))
    assert last["type"] == "done"
