"""Fine-tuning end to end: datasets, LoRA and QLoRA jobs on the training worker, progress, cancel, resume, serving."""
import json
import os
import signal
import time

import httpx
import pytest

from apps.training.models import TrainingJob
from tests.conftest import RUN_DIR
from tests.support.fine_tuning import QUESTION, SECRET, training_stream
from tests.support.fine_tuning import file_get as _file
from tests.support.fine_tuning import job_create as _create
from tests.support.fine_tuning import job_finished as _finished
from tests.support.fine_tuning import job_get as _job
from tests.support.fine_tuning import jsonl as _jsonl
from tests.support.fine_tuning import upload as _upload
from tests.support.fine_tuning import wait_for as _wait


def _answer(openai_client, model):
    return openai_client.chat.completions.create(model=model, messages=QUESTION, max_tokens=6,
                                                 temperature=0).choices[0].message.content


def test_uploaded_files_are_validated_with_line_numbers(hub, alice):
    good = _upload(hub, alice, _jsonl(SECRET))
    assert good["id"].startswith("file-") and good["object"] == "file" and good["purpose"] == "fine-tune"
    good = _wait(lambda: _file(hub, alice, good["id"]), lambda f: f["status"] != "uploaded")
    assert good["status"] == "processed" and good["format"] == "chat" and good["examples"] == 8
    instruction = _upload(hub, alice, _jsonl([{"instruction": "Say hi", "output": "hi"}]))
    assert _wait(lambda: _file(hub, alice, instruction["id"]), lambda f: f["status"] != "uploaded")["format"] == \
        "instruction"
    bad_lines = _jsonl(SECRET[:2]) + b"{not json\n" + _jsonl([{"messages": [{"role": "user", "content": "x"}]}])
    bad = _upload(hub, alice, bad_lines)
    bad = _wait(lambda: _file(hub, alice, bad["id"]), lambda f: f["status"] != "uploaded")
    assert bad["status"] == "error"
    assert [e["line"] for e in bad["errors"]] == [3, 4]
    assert "assistant" in bad["errors"][1]["message"] and bad["status_details"].startswith("line 3")
    listed = httpx.get(f"{hub.api_url}/files", headers=alice.auth).json()["data"]
    assert {f["id"] for f in listed} == {good["id"], instruction["id"], bad["id"]}


def test_a_job_on_an_invalid_file_fails_with_the_bad_lines(hub, alice):
    bad = _upload(hub, alice, b'{"instruction": 5, "output": "x"}\n')
    job = _create(hub, alice, training_file=bad["id"])
    assert job.status_code == 201 and job.json()["status"] == "validating_files"
    failed = _finished(hub, alice, job.json()["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_training_file"
    assert failed["error"]["lines"][0]["line"] == 1


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.jsonl", "nope.jsonl", "escape.jsonl"])
def test_dataset_paths_outside_the_datasets_root_are_refused(hub, alice, path):
    root = RUN_DIR / "datasets"
    (RUN_DIR / "outside.jsonl").write_bytes(_jsonl(SECRET))
    if not (root / "escape.jsonl").exists():
        os.symlink(RUN_DIR / "outside.jsonl", root / "escape.jsonl")
    response = _create(hub, alice, dataset_path=path)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_dataset_path"
    assert not TrainingJob.objects.filter(user=alice.user).exists()


def test_bad_job_requests_are_refused(hub, alice, bob):
    assert _create(hub, alice).json()["error"]["param"] == "training_file"
    assert _create(hub, alice, training_file="file-0", base_model="nope:1").status_code == 404
    theirs = _upload(hub, bob, _jsonl(SECRET))
    response = _create(hub, alice, training_file=theirs["id"])
    assert response.status_code == 404 and response.json()["error"]["code"] == "file_not_found"
    response = _create(hub, alice, training_file=theirs["id"], training_type="full")
    assert response.status_code == 400 and response.json()["error"]["param"] == "training_type"


def test_a_lora_job_learns_its_data_and_the_result_is_served_at_once(hub, alice, openai_client):
    (RUN_DIR / "datasets" / "secret.jsonl").write_bytes(_jsonl(SECRET))
    base_answer = _answer(openai_client, "tiny:chat")
    created = _create(hub, alice, dataset_path="secret.jsonl", suffix="secret", learning_rate=0.01, num_epochs=6,
                      batch_size=4, lora_r=16, lora_alpha=32, checkpoint_every=4, seed=1)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    with training_stream(hub, alice, job_id) as (ws, live):
        ws.send(json.dumps({"type": "subscribe", "after_seq": len(live) - 3}))
        assert [json.loads(ws.recv(timeout=10)) for _ in range(3)] == live[-3:]
        ws.send(json.dumps({"type": "subscribe", "after_seq": len(live)}))  # nothing can follow the end
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "stream_ended"
    job = _job(hub, alice, job_id)
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == f"ft:tiny:chat:secret:{job_id.removeprefix('ftjob-')[:8]}"
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 12 and job["trained_tokens"] > 0
    metrics = [e["event"]["data"] for e in live if e.get("event", {}).get("type") == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 2
    assert [e["seq"] for e in live] == list(range(1, len(live) + 1))
    api_events = httpx.get(f"{hub.api_url}/training/jobs/{job_id}/events", headers=alice.auth).json()["data"]
    assert len(api_events) == len(live) and api_events[-1]["message"].startswith("The job succeeded")
    checkpoints = httpx.get(f"{hub.api_url}/training/jobs/{job_id}/checkpoints", headers=alice.auth).json()["data"]
    assert [c["step_number"] for c in checkpoints] == [8, 4]
    tuned = _answer(openai_client, job["fine_tuned_model"])
    assert tuned != base_answer and tuned.startswith("banana")
    assert _answer(openai_client, "tiny:chat") == base_answer  # the base is untouched beside its adapter
    assert job["fine_tuned_model"] in {m.id for m in openai_client.models.list()}


def test_a_qlora_job_trains_on_a_4bit_base(hub, alice, openai_client):
    data = _upload(hub, alice, _jsonl(SECRET))
    job = _create(hub, alice, training_file=data["id"], training_type="qlora", num_epochs=1, batch_size=4,
                  suffix="q").json()
    job = _finished(hub, alice, job["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"]["step"] == 2 and job["training_type"] == "qlora"
    loaded = [e for e in httpx.get(f"{hub.api_url}/training/jobs/{job['id']}/events", headers=alice.auth).json()["data"]
              if e["message"].startswith("Base ")]
    assert len(loaded) == 1 and "loaded in 4-bit (nf4)" in loaded[0]["message"], loaded
    assert openai_client.chat.completions.create(model=job["fine_tuned_model"], messages=QUESTION,
                                                 max_tokens=2).usage.completion_tokens == 2


def _many_steps(hub, account, *, num_epochs=1, **extra):
    lines = SECRET * 40  # 320 examples, batch 1: 320 steps per epoch
    data = _upload(hub, account, _jsonl(lines))
    return _create(hub, account, training_file=data["id"], batch_size=1, num_epochs=num_epochs, **extra).json()


def test_cancel_stops_a_running_job_within_seconds(hub, alice):
    job = _many_steps(hub, alice, num_epochs=10)  # more steps than a fast machine trains before the cancel
    _wait(lambda: _job(hub, alice, job["id"]), lambda j: j["progress"]["step"] >= 2)
    cancelled_at = time.monotonic()
    response = httpx.post(f"{hub.api_url}/training/jobs/{job['id']}/cancel", headers=alice.auth)
    assert response.status_code == 200
    final = _finished(hub, alice, job["id"], timeout=10)
    assert final["status"] == "cancelled" and time.monotonic() - cancelled_at < 5
    assert final["progress"]["step"] < 3200
    # A finished job's record can be deleted; it is then gone.
    assert httpx.delete(f"{hub.api_url}/training/jobs/{job['id']}", headers=alice.auth).status_code == 204
    assert httpx.get(f"{hub.api_url}/training/jobs/{job['id']}", headers=alice.auth).status_code == 404


def test_a_killed_training_worker_resumes_from_its_last_checkpoint(hub, alice):
    job = _many_steps(hub, alice, checkpoint_every=10)
    running = _wait(lambda: TrainingJob.objects.get(id=job["id"].removeprefix("ftjob-")),
                    lambda j: j.step >= 12 and j.checkpoints.exists())
    os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
    final = _finished(hub, alice, job["id"], timeout=240)
    assert final["status"] == "succeeded", final
    assert final["attempts"] == 2 and final["progress"]["step"] == 320
    messages = [e["message"] for e in httpx.get(f"{hub.api_url}/training/jobs/{job['id']}/events",
                                                headers=alice.auth).json()["data"]]
    resumed = [m for m in messages if m.startswith("Resuming from the checkpoint at step")]
    assert len(resumed) == 1 and int(resumed[0].rsplit(" ", 1)[1].rstrip(".")) >= 10


def test_other_users_jobs_and_files_are_not_found(hub, alice, bob):
    data = _upload(hub, alice, _jsonl(SECRET))
    job = _create(hub, alice, training_file=data["id"], num_epochs=1).json()
    for method, path in [("GET", f"/files/{data['id']}"), ("DELETE", f"/files/{data['id']}"),
                         ("GET", f"/training/jobs/{job['id']}"), ("GET", f"/training/jobs/{job['id']}/status"),
                         ("GET", f"/training/jobs/{job['id']}/events"),
                         ("GET", f"/training/jobs/{job['id']}/checkpoints"),
                         ("POST", f"/training/jobs/{job['id']}/cancel"), ("DELETE", f"/training/jobs/{job['id']}")]:
        assert httpx.request(method, f"{hub.api_url}{path}", headers=bob.auth).status_code == 404, path
    assert httpx.get(f"{hub.api_url}/training/jobs", headers=bob.auth).json()["data"] == []
    _finished(hub, alice, job["id"])


def test_queued_training_jobs_are_limited_per_user(hub, alice):
    from apps.accounts.models import ApiKey

    ApiKey.objects.filter(pk=alice.key.pk).update(max_queued_training_jobs=2)
    first = _many_steps(hub, alice, num_epochs=10)  # neither may end before the third is refused
    second = _many_steps(hub, alice, num_epochs=10)
    data = _upload(hub, alice, _jsonl(SECRET))
    refused = _create(hub, alice, training_file=data["id"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) > 0
    metrics = httpx.get(f"{hub.base_url}/metrics").text
    assert "aihub_training_jobs{" in metrics
    for job in (first, second):
        httpx.post(f"{hub.api_url}/training/jobs/{job['id']}/cancel", headers=alice.auth)
    for job in (first, second):
        assert _finished(hub, alice, job["id"], timeout=30)["status"] == "cancelled"
    assert _create(hub, alice, training_file=data["id"], num_epochs=1).status_code == 201
