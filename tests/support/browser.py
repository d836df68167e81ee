"""Browser tests: a real headless Chromium (Debian's `chromium`) driven by Playwright, against the session hub.

Playwright for Python (requirements/dev.txt) drives the browser the system
has: `/usr/bin/chromium` (Debian's package, installed by `make install-dev`
when missing; `AIHUB_TEST_CHROMIUM` names another binary). Nothing is
downloaded: `playwright install` is never needed.

Fixtures (tests/conftest.py imports them, so every test module may ask for them):

- `chromium` (per module): the launched headless browser, with Playwright's loop (see below).
- `staff_browser` (per test): a `StaffBrowser` logged in to the admin of the
  session hub (`hub` fixture) as a fresh superuser, through the login form,
  in a 1400 x 900 window. Its attributes and methods:
    - `page`: the Playwright `Page` (sync API), already on the admin index;
    - `user`: the Django user it is logged in as;
    - `goto(path)`: open a path of the hub (`"/admin/"`), waiting for the load;
    - `screenshot(name)`: save a full-page PNG as `var/artifacts/<name>.png`
      (`AIHUB_TEST_ARTIFACTS` moves the folder) and return its path;
    - `console_errors`: what the page reported so far: console messages of
      type `error` and uncaught exceptions (`pageerror`), as strings.
  At teardown it asserts that `console_errors` is empty: a test that expects
  an error reads it and clears the list itself.

Example:

    def test_the_dashboard_says_what_is_loaded(staff_browser, models):
        staff_browser.goto("/admin/")
        row = staff_browser.page.locator(".aihub-loaded-model", has_text=models["default"])
        expect(row).to_be_visible()
        staff_browser.screenshot("dashboard")

Playwright's sync API runs its own event loop on the test's thread from the
browser's start to its end, so Django sees an "async context" there and would
refuse the ORM; the test process is single-threaded and nothing else runs in
that loop, so the check is switched off (DJANGO_ALLOW_ASYNC_UNSAFE) while the
browser lives: one module's tests, after which it is on again.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import ROOT

CHROMIUM = os.environ.get("AIHUB_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS_DIR = Path(os.environ.get("AIHUB_TEST_ARTIFACTS", ROOT / "var" / "artifacts"))
VIEWPORT = {"width": 1400, "height": 900}  # the width the layout checks are made at
PASSWORD = "browser-pw-123456"


@dataclass
class StaffBrowser:
    page: object
    user: object
    base_url: str
    console_errors: list[str] = field(default_factory=list)

    def goto(self, path: str):
        return self.page.goto(self.base_url + path, wait_until="load")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS_DIR / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install-dev` installs Debian's chromium (or set "
                    "AIHUB_TEST_CHROMIUM to a Chromium binary)")
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # see the module's docstring
    try:
        with sync_playwright() as playwright:
            # --no-sandbox: the tests may run as root (CI does), where Chromium's sandbox refuses to start.
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            try:
                yield browser
            finally:
                browser.close()
    finally:
        # Playwright's loop ends with the module: later modules get Django's check back.
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def staff_browser(hub, chromium):
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser(username=f"browser-{uuid.uuid4().hex[:8]}",
                                                     password=PASSWORD)
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    session = StaffBrowser(page=page, user=user, base_url=hub.base_url)

    def on_console(message):
        url = message.location.get("url") or ""
        if message.type == "error":
            session.console_errors.append(f"console: {message.text} ({url})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: session.console_errors.append(f"page error: {error}"))
    try:
        session.goto("/admin/login/?next=/admin/")
        page.fill("#id_username", user.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{hub.base_url}/admin/")
        yield session
        assert session.console_errors == [], f"the browser reported errors: {session.console_errors}"
    finally:
        context.close()
