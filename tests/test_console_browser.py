"""The operations dashboard in a real headless Chromium (tests/support/browser.py), as an operator uses it.

Saves var/artifacts/dashboard.png (linked from docs/operations.md).
"""
from __future__ import annotations

import httpx
from playwright.sync_api import expect

from tests.conftest import make_account

# The dashboard refreshes every 5 s. The page after a button shows the heartbeat of that moment, which a beat
# the worker's timer thread started just before the change may still overwrite once (workers/heartbeat.py):
# the refresh after the next beat shows the change, as an operator would see it.
REFRESH_TIMEOUT_MS = 30_000


def _loaded_row(page, model_id):
    return page.locator(f'.aihub-loaded-model[data-model="{model_id}"]')


def test_the_dashboard_shows_the_default_model_and_unloads_and_loads_it(staff_browser, openai_client, models):
    from django.contrib.admin.models import LogEntry

    default = models["default"]
    openai_client.chat.completions.create(model=default, max_tokens=2,
                                          messages=[{"role": "user", "content": "hi"}])
    page = staff_browser.page
    staff_browser.goto("/admin/")

    row = _loaded_row(page, default)
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_contain_text("MB")  # its size, for people
    worker = page.locator(".aihub-worker", has=row)
    expect(worker.locator('[data-field="memory"]')).to_contain_text("budget")
    expect(worker.locator('[data-field="models-memory"]')).to_contain_text("MB")
    assert worker.locator(".aihub-fill").first.evaluate("e => parseFloat(e.style.width)") > 0
    # The request just made is in the last hour's figures and on the chart.
    expect(page.locator(f'#aihub-model-figures tr[data-model="{default}"]')).to_be_visible()
    labels = page.evaluate("() => Chart.getChart('aihub-chart-requests').data.datasets.map(d => d.label)")
    assert default in labels
    staff_browser.screenshot("dashboard")

    row.get_by_role("button", name=f"Unload {default}").click()
    expect(page.locator(".messagelist")).to_contain_text(f"Unloaded {default} from")
    expect(_loaded_row(page, default)).to_have_count(0, timeout=REFRESH_TIMEOUT_MS)

    page.get_by_label("Model to load").select_option(default)
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.locator(".messagelist")).to_contain_text(f"Loaded {default} on")
    expect(_loaded_row(page, default)).to_be_visible(timeout=REFRESH_TIMEOUT_MS)

    history = LogEntry.objects.filter(user=staff_browser.user, object_id=default).order_by("action_time")
    assert [entry.change_message.split(" ")[0] for entry in history] == ["Unloaded", "Loaded"]


def test_the_dashboard_follows_a_change_made_elsewhere_without_a_reload(staff_browser, hub, models):
    """An operator watching the page sees a model go when someone else unloads it through the API."""
    operator = make_account("ops", staff=True, scopes=["inference", "admin"])
    tiny = models["tiny"]
    response = httpx.post(f"{hub.api_url}/models/load", headers=operator.auth, json={"model_id": tiny}, timeout=120)
    assert response.status_code == 200, response.text
    page = staff_browser.page
    staff_browser.goto("/admin/")
    expect(_loaded_row(page, tiny)).to_be_visible()

    response = httpx.post(f"{hub.api_url}/models/unload", headers=operator.auth, json={"model_id": tiny},
                          timeout=120)
    assert response.status_code == 200, response.text
    expect(_loaded_row(page, tiny)).to_have_count(0, timeout=REFRESH_TIMEOUT_MS)
    expect(page.locator("#aihub-updated")).to_have_attribute("data-stale", "false")
