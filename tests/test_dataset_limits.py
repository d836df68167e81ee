"""Datasets that cannot crash the validator, disks that cannot fill: line and depth bounds, attempt caps,
checkpoint pruning and the per-user storage quota, through /api/v1/files and /api/v1/training/jobs."""
import httpx
from django.conf import settings

import celeryconfig
from apps.core.publishing import send_task
from apps.training.models import TrainingCheckpoint, TrainingFile, TrainingJob
from tests.conftest import RUN_DIR
from tests.test_training import SECRET, _create, _file, _finished, _job, _jsonl, _upload, _wait

NESTED = b"[" * 200_000 + b"\n"


def _validated(hub, account, file_id, timeout=60):
    return _wait(lambda: _file(hub, account, file_id), lambda f: f["status"] != "uploaded", timeout=timeout)


def _default_worker_alive(hub) -> bool:
    return hub.processes.processes["default"].poll() is None


def _run_dir(job_id: str):
    return settings.AIHUB_TRAINING_DIR / job_id.removeprefix("ftjob-")


def _use_storage(account, bytes_: int) -> TrainingFile:
    """Stands for what the user already stores: the quota is a sum over rows, so one row of that size."""
    return TrainingFile.objects.create(user=account.user, filename="earlier.jsonl", bytes=bytes_,
                                       path=str(RUN_DIR / "nowhere.jsonl"), status=TrainingFile.Status.PROCESSED)


def test_a_line_of_nested_brackets_ends_the_file_in_error_and_the_validator_keeps_serving(hub, alice):
    bad = _validated(hub, alice, _upload(hub, alice, NESTED)["id"])
    assert bad["status"] == "error", bad
    assert bad["errors"][0]["line"] == 1 and "nested too deeply" in bad["errors"][0]["message"]
    assert _default_worker_alive(hub)
    good = _validated(hub, alice, _upload(hub, alice, _jsonl(SECRET))["id"])
    assert good["status"] == "processed" and good["examples"] == 8


def test_a_line_over_the_byte_limit_ends_the_file_in_error_and_later_lines_keep_their_numbers(hub, alice):
    limit = settings.AIHUB_MAX_DATASET_LINE_BYTES
    huge = {"messages": [{"role": "user", "content": "x" * (limit + 10)}, {"role": "assistant", "content": "y"}]}
    content = _jsonl([huge, SECRET[0]]) + b"{not json\n"
    bad = _validated(hub, alice, _upload(hub, alice, content)["id"])
    assert bad["status"] == "error", bad
    assert [e["line"] for e in bad["errors"]] == [1, 3]
    assert f"longer than {limit} bytes" in bad["errors"][0]["message"]
    assert _default_worker_alive(hub)
    assert _validated(hub, alice, _upload(hub, alice, _jsonl(SECRET))["id"])["status"] == "processed"


def test_a_job_on_a_dataset_path_of_nested_brackets_fails_with_the_reason(hub, alice):
    (RUN_DIR / "datasets" / "nested.jsonl").write_bytes(_jsonl(SECRET[:2]) + NESTED)
    job = _create(hub, alice, dataset_path="nested.jsonl")
    assert job.status_code == 201, job.text
    failed = _wait(lambda: _job(hub, alice, job.json()["id"]), lambda j: j["status"] != "validating_files", timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_training_file"
    assert failed["error"]["param"] == "dataset_path" and failed["error"]["lines"][0]["line"] == 3


def test_a_redelivered_file_validation_beyond_the_attempt_cap_ends_in_error(hub, alice):
    record = _validated(hub, alice, _upload(hub, alice, _jsonl(SECRET))["id"])
    pk = record["id"].removeprefix("file-")
    # As if every delivery so far had started and then lost its worker: the row says so, the message comes again.
    TrainingFile.objects.filter(id=pk).update(status=TrainingFile.Status.UPLOADED, format="", examples=0,
                                              validation_attempts=settings.AIHUB_TASK_MAX_ATTEMPTS)
    send_task(celeryconfig.VALIDATE_FILE_TASK, args=[pk], queue="default")
    ended = _validated(hub, alice, record["id"])
    assert ended["status"] == "error" and "validation failed repeatedly" in ended["status_details"]
    assert TrainingFile.objects.get(id=pk).validation_attempts == settings.AIHUB_TASK_MAX_ATTEMPTS + 1


def test_a_redelivered_job_validation_beyond_the_attempt_cap_fails_the_job(hub, alice):
    (RUN_DIR / "datasets" / "fine.jsonl").write_bytes(_jsonl(SECRET))
    job = TrainingJob.objects.create(user=alice.user, base_model="tiny:chat", hyperparameters={},
                                     dataset_path=str(RUN_DIR / "datasets" / "fine.jsonl"),
                                     validation_attempts=settings.AIHUB_TASK_MAX_ATTEMPTS)
    send_task(celeryconfig.VALIDATE_JOB_TASK, args=[str(job.id)], queue="default")
    failed = _finished(hub, alice, job.public_id, timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "validation_failed"
    assert "validation failed repeatedly" in failed["error"]["message"]


def test_an_upload_beyond_the_storage_quota_is_refused_and_nothing_is_stored(hub, alice):
    quota = settings.AIHUB_USER_STORAGE_QUOTA_BYTES
    earlier = _use_storage(alice, quota - 100)
    content = _jsonl(SECRET)
    response = httpx.post(f"{hub.api_url}/files", headers=alice.auth, timeout=30, data={"purpose": "fine-tune"},
                          files={"file": ("data.jsonl", content)})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_quota_exceeded" and error["param"] == "file"
    assert f"{quota - 100} of {quota} bytes" in error["message"]
    assert [f["id"] for f in httpx.get(f"{hub.api_url}/files", headers=alice.auth).json()["data"]] == \
        [earlier.public_id]
    assert not list((settings.AIHUB_FILES_DIR / str(alice.user.id)).glob("*"))
    assert httpx.delete(f"{hub.api_url}/files/{earlier.public_id}", headers=alice.auth).status_code == 200
    assert _upload(hub, alice, content)["bytes"] == len(content)


def test_a_job_keeps_only_its_newest_checkpoints_in_the_api_and_on_disk(hub, alice):
    keep = settings.AIHUB_TRAINING_KEEP_CHECKPOINTS
    (RUN_DIR / "datasets" / "eight.jsonl").write_bytes(_jsonl(SECRET))
    job = _create(hub, alice, dataset_path="eight.jsonl", batch_size=1, num_epochs=1, checkpoint_every=1).json()
    assert _finished(hub, alice, job["id"])["status"] == "succeeded"
    listed = httpx.get(f"{hub.api_url}/training/jobs/{job['id']}/checkpoints", headers=alice.auth).json()["data"]
    newest = list(range(7, 7 - keep, -1))  # 8 steps: a checkpoint after steps 1..7, none after the last
    assert [c["step_number"] for c in listed] == newest
    assert sorted(p.name for p in _run_dir(job["id"]).iterdir()) == sorted(f"step-{s}" for s in newest)
    assert all(c.bytes > 0 for c in TrainingCheckpoint.objects.filter(job_id=job["id"].removeprefix("ftjob-")))


def test_deleting_a_finished_job_removes_its_checkpoints_from_disk(hub, alice):
    (RUN_DIR / "datasets" / "four.jsonl").write_bytes(_jsonl(SECRET[:4]))
    job = _create(hub, alice, dataset_path="four.jsonl", batch_size=1, num_epochs=1, checkpoint_every=2).json()
    assert _finished(hub, alice, job["id"])["status"] == "succeeded"
    assert (_run_dir(job["id"]) / "step-2").is_dir()
    assert httpx.delete(f"{hub.api_url}/training/jobs/{job['id']}", headers=alice.auth).status_code == 204
    assert not _run_dir(job["id"]).exists()


def test_a_checkpoint_beyond_the_storage_quota_is_skipped_with_a_warning_and_training_goes_on(hub, alice):
    _use_storage(alice, settings.AIHUB_USER_STORAGE_QUOTA_BYTES - 1024)
    (RUN_DIR / "datasets" / "quota.jsonl").write_bytes(_jsonl(SECRET[:4]))
    job = _create(hub, alice, dataset_path="quota.jsonl", batch_size=1, num_epochs=1, checkpoint_every=1).json()
    final = _finished(hub, alice, job["id"])
    assert final["status"] == "succeeded" and final["progress"]["step"] == 4
    events = httpx.get(f"{hub.api_url}/training/jobs/{job['id']}/events", headers=alice.auth).json()["data"]
    skipped = [e for e in events if e["message"].startswith("Checkpoint at step")]
    assert [e["data"]["step"] for e in skipped] == [1, 2, 3] and {e["level"] for e in skipped} == {"warning"}
    assert "storage quota" in skipped[0]["message"]
    assert httpx.get(f"{hub.api_url}/training/jobs/{job['id']}/checkpoints",
                     headers=alice.auth).json()["data"] == []
    assert not _run_dir(job["id"]).exists() or not list(_run_dir(job["id"]).iterdir())

