"""A training job's page in a real headless Chromium (Debian's package, driven by Playwright).

An operator logs in through the admin's form on the live hub, opens a finished
job and finds its loss curve with one point per logged step, read from the
chart itself; the page logs no console error (the `staff_browser` fixture,
tests/support/browser.py, checks that). The screenshot is kept as an
artifact (var/artifacts/training_job.png, linked from docs/operations.md).
"""
from __future__ import annotations

import uuid

import pytest

from apps.training.models import TrainingEvent
from tests.conftest import make_account
from tests.support.fine_tuning import SECRET, fine_tune, job_create, job_finished, job_get, jsonl, upload, wait_for


@pytest.fixture(scope="module")
def finished_job(hub) -> tuple[str, list[dict]]:
    """A succeeded job of 6 logged steps (3 epochs of 2) and its logged metrics, in order."""
    job = fine_tune(hub, make_account("trainee"), suffix="browser", num_epochs=3)
    job_id = job["id"].removeprefix("ftjob-")
    return job_id, list(TrainingEvent.objects.filter(job_id=job_id, type="metrics").values_list("data", flat=True))


@pytest.fixture(scope="module")
def trainee():
    return make_account("trainee")


@pytest.fixture(scope="module")
def answered(hub, trainee):
    """One stored chat request of the tiny model, so the request log and the model's figures have a row."""
    from openai import OpenAI

    client = OpenAI(base_url=hub.api_url, api_key=trainee.raw_key, max_retries=0, timeout=120)
    client.chat.completions.create(model="tiny:chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3)


def test_a_finished_job_page_draws_one_point_per_logged_step(finished_job, staff_browser):
    page = staff_browser.page
    job_id, logged = finished_job
    assert len(logged) == 6

    staff_browser.goto(f"/admin/training/trainingjob/{uuid.UUID(job_id)}/change/")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('loss-chart'))")
    drawn = page.evaluate("""() => {
        const chart = Chart.getChart(document.getElementById('loss-chart'));
        return chart.data.datasets.map((set) => ({label: set.label, points: set.data}));
    }""")
    loss = next(d for d in drawn if d["label"] == "training loss")
    assert [p["x"] for p in loss["points"]] == [d["step"] for d in logged] == [1, 2, 3, 4, 5, 6]
    assert [p["y"] for p in loss["points"]] == pytest.approx([d["train_loss"] for d in logged])
    assert page.inner_text("#job-status") == "succeeded" and "step 6 / 6" in page.inner_text("#job-progress")
    assert "The job succeeded" in page.inner_text("#job-events")
    staff_browser.screenshot("training_job")


def test_a_running_job_page_draws_new_steps_live_and_its_cancel_button_stops_it(hub, trainee, staff_browser):
    page = staff_browser.page
    data = upload(hub, trainee, jsonl(SECRET * 40))
    # 3,200 steps: far more than a fast machine trains while the page loads and draws three more.
    job = job_create(hub, trainee, training_file=data["id"], batch_size=1, num_epochs=10).json()
    wait_for(lambda: job_get(hub, trainee, job["id"]), lambda j: j["progress"] and j["progress"]["step"] >= 1)

    staff_browser.goto(f"/admin/training/trainingjob/{uuid.UUID(job['id'].removeprefix('ftjob-'))}/change/")
    count = "() => Chart.getChart(document.getElementById('loss-chart')).data.datasets[0].data.length"
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('loss-chart'))")
    first = page.evaluate(count)
    page.wait_for_function(f"() => ({count})() >= {first + 3}", timeout=60_000)  # drawn by the page's polling
    assert page.inner_text("#job-status") == "running" and page.inner_text("#job-eta") != "—"
    page.click("#cancel-job")
    assert job_finished(hub, trainee, job["id"], timeout=30)["status"] == "cancelled"
    # The page sees the job finish and reloads once: it now offers a retry instead of a cancel.
    page.wait_for_selector("#retry-job", timeout=30_000)
    assert page.inner_text("#job-status") == "cancelled" and page.locator("#cancel-job").count() == 0


def test_the_columns_that_matter_fit_1400_px_and_the_model_page_draws_its_figures(answered, staff_browser):
    page = staff_browser.page
    # Each list scrolls sideways inside its own box: a column past 1400 px would be out of sight.
    for url, columns in (("catalog/modelentry", ("live_state", "enabled", "size")),
                         ("accounts/apikey", ("shown_status", "validity")),
                         ("chat/generationrequest", ("shown_state", "error_code", "worker"))):
        staff_browser.goto(f"/admin/{url}/")
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1400, url
        for column in columns:
            box = page.locator(f"th.column-{column}").bounding_box()
            assert box["x"] + box["width"] <= 1400, (url, column)
    staff_browser.goto("/admin/catalog/modelentry/tiny:chat/change/")
    page.wait_for_function("() => window.Chart && Chart.getChart(document.getElementById('requests-chart'))")
    hours = page.evaluate("() => Chart.getChart(document.getElementById('requests-chart')).data.labels.length")
    assert hours == 24
