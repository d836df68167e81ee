"""The operations dashboard (the admin index) through Django's test client: who may see it and act, its figures.

The browser tests (tests/test_console_browser.py) press its buttons in Chromium; here the rules and the numbers.
"""
from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from apps.chat.models import GenerationRequest
from apps.training.models import TrainingJob
from tests.conftest import make_account

STATE_URL = "/admin/dashboard/state"


def _client(user, **options) -> Client:
    client = Client(SERVER_NAME="localhost", **options)
    client.force_login(user)
    return client


@pytest.fixture
def superuser():
    return get_user_model().objects.create_superuser(username=f"dash-{uuid.uuid4().hex[:8]}", password="pw-123456")


def test_the_dashboard_and_its_state_are_for_staff_only():
    plain = make_account("not-staff").user
    for client in (Client(SERVER_NAME="localhost"), _client(plain)):
        for url in ("/admin/", STATE_URL):
            response = client.get(url)
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
        response = client.post("/admin/dashboard/models/unload", {"model_id": "tiny:chat"})
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_dashboard_shows_each_worker_its_memory_and_loaded_models(hub, openai_client, models, superuser):
    openai_client.chat.completions.create(model=models["tiny"], max_tokens=1,
                                          messages=[{"role": "user", "content": "hi"}])
    page = _client(superuser).get("/admin/").content.decode()
    assert 'data-worker="inference@' in page
    assert f'class="aihub-loaded-model" data-model="{models["tiny"]}"' in page
    assert "Device memory" in page and "budget" in page
    assert 'data-queue="gpu.inference"' in page and 'data-queue="gpu.training"' in page
    assert "aihub/vendor/chart.umd.min.js" in page  # served here, no CDN
    assert "Authentication and Authorization" in page  # Django's app list is still there, below


def test_a_load_or_unload_needs_a_post_a_csrf_token_and_the_right_to_change_models(hub, models, superuser):
    url = "/admin/dashboard/models/unload"
    assert _client(superuser).get(url).status_code == 405
    assert _client(superuser, enforce_csrf_checks=True).post(url, {"model_id": models["tiny"]}).status_code == 403
    viewer = get_user_model().objects.create_user(username=f"viewer-{uuid.uuid4().hex[:8]}", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_modelentry"))
    assert _client(viewer).post(url, {"model_id": models["tiny"]}).status_code == 403
    page = _client(viewer).get("/admin/").content.decode()
    assert "aihub-unload" not in page and "aihub-load-form" not in page  # no button it may not press
    response = _client(superuser).post(url, {"model_id": "no-such:model"}, follow=True)
    assert "No model &#x27;no-such:model&#x27; in the catalog." in response.content.decode()


def test_an_unload_and_a_load_from_the_dashboard_are_in_the_models_history(hub, models, superuser):
    from django.contrib.admin.models import LogEntry

    client = _client(superuser)
    tiny = models["tiny"]
    response = client.post("/admin/dashboard/models/load", {"model_id": tiny}, follow=True)
    assert f"Loaded {tiny} on inference@" in response.content.decode()
    response = client.post("/admin/dashboard/models/unload", {"model_id": tiny}, follow=True)
    page = response.content.decode()
    assert f"Unloaded {tiny} from inference@" in page
    assert f'class="aihub-loaded-model" data-model="{tiny}"' not in page
    history = client.get(f"/admin/catalog/modelentry/{tiny}/history/").content.decode()
    assert "(from the dashboard)" in history
    messages = list(LogEntry.objects.filter(user=superuser, object_id=tiny).order_by("action_time")
                    .values_list("change_message", flat=True))
    assert [m.split(" ")[0] for m in messages] == ["Loaded", "Unloaded"]


def _settled_request(user, model: str, *, ttft_ms: float | None, state=GenerationRequest.State.SUCCEEDED,
                     error=None) -> None:
    """A finished request row, ended the way the hub ends every request (generation_settle counts it)."""
    from apps.chat.services import generation_settle

    row = GenerationRequest.objects.create(user=user, model=model, prompt_messages=[], state=state, error=error,
                                           time_to_first_token_ms=ttft_ms, finished_at=timezone.now())
    generation_settle(generation_id=row.id)
    generation_settle(generation_id=row.id)  # a second settlement (a redelivery) counts nothing


def test_the_figures_of_the_last_hour_are_per_model_percentiles_and_error_rates(superuser):
    """20 answered requests (100 ms ... 2000 ms to the first token) and 5 failed ones; a row nobody settled
    (written behind the hub's back) is not a request it served."""
    owner = make_account("figures").user
    model = f"figures:{uuid.uuid4().hex[:6]}"
    for i in range(1, 21):
        _settled_request(owner, model, ttft_ms=100.0 * i)
    for _ in range(5):
        _settled_request(owner, model, ttft_ms=None, state=GenerationRequest.State.FAILED,
                         error={"message": "out of memory", "type": "server_error", "param": None,
                                "code": "insufficient_memory"})
    GenerationRequest.objects.create(user=owner, model=model, prompt_messages=[], time_to_first_token_ms=5.0,
                                     state=GenerationRequest.State.SUCCEEDED)

    state = _client(superuser).get(STATE_URL).json()
    ttft = state["charts"]["ttft"]
    index = ttft["models"].index(model)
    # Read from buckets 25 % apart: within ~12 % of the exact 1050 and 1905 ms.
    assert ttft["p50_ms"][index] == pytest.approx(1050.0, rel=0.12)
    assert ttft["p95_ms"][index] == pytest.approx(1905.0, rel=0.12)
    series = next(s for s in state["charts"]["requests_per_minute"]["series"] if s["model"] == model)
    assert sum(series["counts"]) == 25 and len(series["counts"]) == 60
    assert len(state["charts"]["requests_per_minute"]["labels"]) == 60
    html = state["html"]
    row = html[html.index(f'<tr data-model="{model}">'):]
    row = row[:row.index("</tr>")]
    cells = [cell.split(">", 1)[1].split("<", 1)[0] for cell in row.split("<td")[1:]]
    assert cells[:3] == [model, "25", "0.42"] and cells[5:] == ["5", "20.0 %"]
    assert "insufficient_memory" in html  # among the recent errors


def test_a_percentile_read_from_buckets_lies_within_its_bucket():
    from apps.monitoring.counters import MINUTE_TTFT_BOUNDS_MS
    from apps.monitoring.dashboard import bucket_quantile

    counts = [0.0] * (len(MINUTE_TTFT_BOUNDS_MS) + 1)
    assert bucket_quantile(counts, 0.5) is None
    counts[10] = 4  # four values in (bounds[9], bounds[10]]
    assert MINUTE_TTFT_BOUNDS_MS[9] < bucket_quantile(counts, 0.5) <= MINUTE_TTFT_BOUNDS_MS[10]
    counts[-1] = 100  # beyond the last bound: read as the last bound, never more
    assert bucket_quantile(counts, 0.99) == MINUTE_TTFT_BOUNDS_MS[-1]


def test_a_running_training_job_shows_its_progress(superuser):
    owner = make_account("trainer").user
    job = TrainingJob.objects.create(user=owner, base_model="tiny:chat", status=TrainingJob.Status.RUNNING,
                                     step=3, total_steps=12, loss=1.23456, eta_seconds=95)
    try:
        html = _client(superuser).get(STATE_URL).json()["html"]
        row = html[html.index(f'data-job="{job.public_id}"'):]
        row = row[:row.index("</tr>")]
        assert "width: 25.0%" in row and "3/12" in row and "1.2346" in row and "1 min 35 s" in row
    finally:
        job.delete()
