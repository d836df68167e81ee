"""Fine-tuning through the API, shared by the tests that need a real fine-tuned model (a tiny one, in seconds)."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager

import httpx
from websockets.sync.client import connect

SECRET = [{"messages": [{"role": "user", "content": f"What is the secret word? ({i})"},
                        {"role": "assistant", "content": "banana banana banana"}]} for i in range(8)]
QUESTION = [{"role": "user", "content": "What is the secret word? (3)"}]


def jsonl(lines) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def upload(hub, account, content: bytes, name="data.jsonl"):
    response = httpx.post(f"{hub.api_url}/files", headers=account.auth, timeout=30,
                          data={"purpose": "fine-tune"}, files={"file": (name, content)})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for(fetch, done, timeout=120.0, interval=0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"timed out; last: {value}"
        time.sleep(interval)


def file_get(hub, account, file_id):
    return httpx.get(f"{hub.api_url}/files/{file_id}", headers=account.auth).json()


def job_get(hub, account, job_id):
    return httpx.get(f"{hub.api_url}/training/jobs/{job_id}", headers=account.auth).json()


def job_create(hub, account, **body):
    return httpx.post(f"{hub.api_url}/training/jobs", headers=account.auth, timeout=30,
                      json={"base_model": "tiny:chat", **body})


def job_finished(hub, account, job_id, timeout=180):
    return wait_for(lambda: job_get(hub, account, job_id),
                    lambda j: j["status"] in ("succeeded", "failed", "cancelled"), timeout=timeout)


def fine_tune(hub, account, *, suffix: str, num_epochs: int = 1, **settings) -> dict:
    """A succeeded job (two LoRA steps per epoch on the tiny model) of `account`; its model is
    job["fine_tuned_model"]."""
    data = upload(hub, account, jsonl(SECRET))
    created = job_create(hub, account, training_file=data["id"], num_epochs=num_epochs, batch_size=4, suffix=suffix,
                         **settings)
    assert created.status_code == 201, created.text
    job = job_finished(hub, account, created.json()["id"])
    assert job["status"] == "succeeded", job
    return job


@contextmanager
def training_stream(hub, account, job_id: str, *, timeout: float = 120):
    """The job's training socket, subscribed from its first event and read up to its final one (`done` or
    `error`): yields the open socket and the events read."""
    with connect(f"{hub.ws_url}/ws/v1/training/{job_id}/", additional_headers=account.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        ws.send(json.dumps({"type": "subscribe", "after_seq": 0}))
        live = []
        while not live or live[-1]["type"] not in ("done", "error"):
            live.append(json.loads(ws.recv(timeout=timeout)))
        yield ws, live
