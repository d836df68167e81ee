"""The operator's admin pages: training, model figures, the read-only request log, keys, and the history.

Pages go through Django's test client in this process, logged in as a superuser,
against the real database, Valkey and the session hub's workers (training jobs
really train, loads really load). The favicon is fetched from the live hub.
"""
from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.test import Client

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_create
from apps.catalog.worker_registry import live_workers
from apps.training.models import TrainingEvent, TrainingJob
from tests.support.fine_tuning import (
    SECRET,
    fine_tune,
    job_create,
    job_finished,
    jsonl,
    training_stream,
    upload,
    wait_for,
)

JOBS = "/admin/training/trainingjob/"


@pytest.fixture
def operator():
    return get_user_model().objects.create_superuser(username=f"op-{uuid.uuid4().hex[:8]}", password="x" * 12)


@pytest.fixture
def console(operator) -> Client:
    client = Client(SERVER_NAME="localhost")
    client.force_login(operator)
    return client


@pytest.fixture(scope="module")
def finished_job(hub):
    """A real LoRA job of 6 logged steps (3 epochs of 2) on the tiny model, with a checkpoint kept."""
    from tests.conftest import make_account

    job = fine_tune(hub, make_account("trainee"), suffix="console", num_epochs=3, checkpoint_every=4)
    return TrainingJob.objects.get(id=job["id"].removeprefix("ftjob-"))


def _history(obj) -> list[str]:
    """The admin history of one object, oldest first."""
    from django.contrib.contenttypes.models import ContentType

    entries = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(obj), object_id=str(obj.pk))
    return list(entries.order_by("id").values_list("change_message", flat=True))


def test_the_job_list_shows_status_progress_and_the_job_page_its_curve(console, finished_job):
    listing = console.get(JOBS).content.decode()
    assert finished_job.id.hex[:8] in listing and "succeeded" in listing
    assert "6 / 6" in listing  # the progress bar's label
    page = console.get(f"{JOBS}{finished_job.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="loss-chart"' in html and "aihub/vendor/chart.umd.min.js" in html
    assert "Checkpoints" in html and "Step 6/6" in html and "The job succeeded" in html
    assert 'name="_save"' not in html  # read-only: its actions are cancel and retry
    points = re.search(r'<script id="loss-points" type="application/json">(.*?)</script>', html).group(1)
    assert points.count('"step"') == 6


def test_the_curve_endpoint_has_one_point_per_logged_step(console, finished_job):
    logged = TrainingEvent.objects.filter(job=finished_job, type="metrics").values_list("data", flat=True)
    state = console.get(f"{JOBS}{finished_job.pk}/metrics/").json()
    assert state["status"] == "succeeded" and state["finished"] and state["step"] == state["total_steps"] == 6
    assert [p["step"] for p in state["points"]] == [d["step"] for d in logged] == [1, 2, 3, 4, 5, 6]
    assert [p["loss"] for p in state["points"]] == [d["train_loss"] for d in logged]
    assert state["points"][0]["learning_rate"] > 0  # the schedule decays it to 0 at the last step
    assert [p["learning_rate"] for p in state["points"]] == [d["learning_rate"] for d in logged]
    assert state["events"][-1]["message"].startswith("The job succeeded")
    later = console.get(f"{JOBS}{finished_job.pk}/metrics/?after_step=4&after_event={state['events'][-1]['seq']}")
    assert [p["step"] for p in later.json()["points"]] == [5, 6] and later.json()["events"] == []


def test_the_curve_endpoint_is_for_staff_only(hub, finished_job, alice):
    anonymous = Client(SERVER_NAME="localhost").get(f"{JOBS}{finished_job.pk}/metrics/")
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    user = Client(SERVER_NAME="localhost")
    user.force_login(alice.user)
    assert user.get(f"{JOBS}{finished_job.pk}/metrics/").status_code == 302


def test_uploaded_files_show_their_validation_status_and_errors(hub, console, alice):
    bad = upload(hub, alice, jsonl(SECRET[:2]) + b"{not json\n")
    wait_for(lambda: console.get(f"/admin/training/trainingfile/{bad['id'].removeprefix('file-')}/change/"),
             lambda page: b"aihub-badge bad" in page.content)
    listing = console.get("/admin/training/trainingfile/?q=" + alice.user.username).content.decode()
    assert "line 3:" in listing and "error" in listing
    page = console.get(f"/admin/training/trainingfile/{bad['id'].removeprefix('file-')}/change/").content.decode()
    assert "<li>line 3:" in page


def test_cancel_and_retry_go_through_the_services_and_into_the_history(hub, console, alice, finished_job):
    data = upload(hub, alice, jsonl(SECRET * 40))
    job = job_create(hub, alice, training_file=data["id"], batch_size=1, num_epochs=10).json()  # 3,200 steps
    row = wait_for(lambda: TrainingJob.objects.get(id=job["id"].removeprefix("ftjob-")), lambda j: j.step >= 2)
    assert console.post(f"{JOBS}{row.pk}/cancel/").status_code == 302
    final = job_finished(hub, alice, job["id"], timeout=30)
    assert final["status"] == "cancelled" and final["progress"]["step"] < 3200
    assert _history(row) == ["Cancelled from the admin."]

    retried = console.post(f"{JOBS}{row.pk}/retry/")
    retry = TrainingJob.objects.exclude(pk=row.pk).get(user=alice.user)
    assert retried["Location"].endswith(f"{JOBS}{retry.pk}/change/")
    assert (retry.training_file_id, retry.hyperparameters, retry.base_model) == (
        row.training_file_id, row.hyperparameters, row.base_model)
    assert _history(row)[-1] == f"Retried from the admin as {retry.public_id}."
    assert _history(retry) == [f"Retry of {row.public_id}."]
    # The cancelled job's live stream still ends with its final event; the retry is noted in its /events.
    with training_stream(hub, alice, job["id"], timeout=30) as (ws, live):
        ws.send(json.dumps({"type": "subscribe", "after_seq": len(live)}))
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "stream_ended"
    noted = httpx.get(f"{hub.api_url}/fine_tuning/jobs/{job['id']}/events", headers=alice.auth).json()["data"]
    assert f"Retried as {retry.public_id}." in [event["message"] for event in noted]
    # The retry is a real job: it runs, and the list's action cancels it.
    wait_for(lambda: TrainingJob.objects.get(pk=retry.pk), lambda j: j.status == "running" and j.step >= 1)
    console.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(retry.pk)]})
    assert job_finished(hub, alice, retry.public_id, timeout=30)["status"] == "cancelled"
    # A job that succeeded is not retried.
    console.post(f"{JOBS}{finished_job.pk}/retry/")
    assert TrainingJob.objects.filter(user=finished_job.user).count() == 1


def test_the_request_log_is_read_only_with_compact_ids_errors_and_workers(console, openai_client):
    answer = openai_client.chat.completions.create(model="tiny:chat", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=3)
    request_id = answer.id.removeprefix("chatcmpl-")
    url = f"/admin/chat/generationrequest/{uuid.UUID(request_id)}/change/"
    page = console.get(url)
    assert page.status_code == 200 and b'name="_save"' not in page.content
    assert console.post(url, {"model": "changed"}).status_code == 403
    assert console.get("/admin/chat/generationrequest/add/").status_code == 403
    assert console.post(url.replace("change", "delete"), {"post": "yes"}).status_code == 403
    listing = console.get("/admin/chat/generationrequest/").content.decode()
    assert f'title="chatcmpl-{request_id}">{request_id[:8]}</span>' in listing
    assert "column-error_code" in listing and "column-worker" in listing
    assert "/admin/chat/generationrequest/add/" not in listing and "delete_selected" not in listing


def test_the_model_page_shows_its_figures_and_a_fixed_id(console, openai_client):
    for _ in range(2):
        openai_client.chat.completions.create(model="tiny:chat", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=4)
    page = console.get("/admin/catalog/modelentry/tiny:chat/change/").content.decode()
    requests = int(re.search(r'id="figure-requests">(\d+)<', page).group(1))
    assert requests >= 2 and "time to first token p95" in page and "tokens/s" in page
    assert 'id="requests-chart"' in page and 'id="requests-per-hour"' in page
    assert 'name="id"' not in page  # the primary key is shown, not editable
    listing = console.get("/admin/catalog/modelentry/").content.decode()
    headers = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', listing)
    assert headers[:5] == ["id", "kind", "live_state", "enabled", "size"]


def test_load_and_unload_from_the_model_list_are_in_the_history(hub, console):
    from apps.catalog.models import ModelEntry

    entry = ModelEntry.objects.get(id="tiny:chat")
    changelist = "/admin/catalog/modelentry/"
    console.post(changelist, {"action": "unload_models", "_selected_action": ["tiny:chat"]})
    wait_for(live_workers, lambda workers: all("tiny:chat" not in w.loaded for w in workers), timeout=30)
    console.post(changelist, {"action": "load_models", "_selected_action": ["tiny:chat"]})
    wait_for(live_workers, lambda workers: any("tiny:chat" in w.loaded for w in workers), timeout=30)
    console.post(changelist, {"action": "unload_models", "_selected_action": ["tiny:chat"]})
    messages = _history(entry)[-2:]  # the first unload may have found it unloaded
    assert [m.split(" ", 1)[0] for m in messages] == ["Loaded", "Unloaded"], messages
    assert "tiny:chat" in messages[0]
    console.post(changelist, {"action": "load_models", "_selected_action": ["tiny:chat"]})  # as the suite found it


def test_scopes_are_stored_once_whoever_makes_the_key(hub, console, alice):
    user = alice.user
    key, _ = api_key_create(user=user, scopes=["training", "inference", "inference", "training"])
    assert key.scopes == ["inference", "training"]
    minted = httpx.post(f"{hub.api_url}/keys", headers=alice.auth, json={"scopes": ["inference", "inference"]})
    assert minted.status_code == 201 and minted.json()["scopes"] == ["inference"]
    # The admin's form: check boxes, one per scope.
    form = console.get("/admin/accounts/apikey/add/").content.decode()
    assert form.count('name="scopes"') == 3 and 'type="checkbox"' in form
    # Rows stored before the fix are mended by the data migration.
    import importlib

    from django.apps import apps as registry

    ApiKey.objects.filter(pk=key.pk).update(scopes=["admin", "inference", "inference"])
    importlib.import_module("apps.accounts.migrations.0003_deduplicate_key_scopes").deduplicate_scopes(
        registry, None)
    assert ApiKey.objects.get(pk=key.pk).scopes == ["inference", "admin"]


def test_keys_show_their_status_and_revoking_is_in_the_history(console, alice):
    from django.utils import timezone

    expired, _ = api_key_create(user=alice.user, name="old", expires_at=timezone.now())
    listing = console.get(f"/admin/accounts/apikey/?q={alice.user.username}").content.decode()
    assert 'aihub-badge ok' in listing and 'aihub-badge warn' in listing and "inference, training" in listing
    console.post("/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [str(alice.key.pk)]})
    assert ApiKey.objects.get(pk=alice.key.pk).status == "revoked"
    assert _history(alice.key) == ["Revoked from the admin (with its minted keys and running work)."]
    listing = console.get(f"/admin/accounts/apikey/?q={alice.user.username}").content.decode()
    assert 'aihub-badge bad' in listing and expired.status == "expired"


def test_view_site_leads_to_the_docs_and_the_favicon_is_served(hub, console):
    index = console.get("/admin/").content.decode()
    assert 'href="/docs"' in index and 'rel="icon"' in index
    icon = httpx.get(f"{hub.base_url}/favicon.ico", follow_redirects=True)
    assert icon.status_code == 200 and icon.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert httpx.get(f"{hub.base_url}/docs").status_code == 200
