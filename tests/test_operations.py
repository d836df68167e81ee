"""What operators touch: keys from the command line, health, docs, admin, logs."""
import re
import subprocess
import sys

import httpx
from django.contrib.auth import get_user_model
from django.test import Client

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate
from tests.conftest import make_account
from tests.support.processes import ROOT


def test_createapikey_prints_a_working_key_alone_on_its_last_line(hub, models):
    result = subprocess.run([sys.executable, "manage.py", "createapikey", "carol-cli"], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    raw = result.stdout.strip().splitlines()[-1]
    assert raw.startswith("ahk_") and " " not in raw
    key = ApiKey.objects.get(user__username="carol-cli")
    # Only a lookup prefix and a hash are stored.
    assert raw not in (key.lookup, key.key_hash) and raw.split("_")[1] == key.lookup
    assert api_key_authenticate(raw_key=raw) == key
    response = httpx.get(f"{hub.api_url}/models", headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200


def test_a_key_with_a_valid_prefix_but_a_wrong_secret_is_refused(alice):
    wrong = alice.raw_key[:-4] + ("AAAA" if not alice.raw_key.endswith("AAAA") else "BBBB")
    assert api_key_authenticate(raw_key=wrong) is None
    assert api_key_authenticate(raw_key=alice.raw_key) == alice.key


def test_health_checks_every_dependency(hub):
    operator = make_account("ops", staff=True, scopes=["admin"])  # details are for operators (docs/observability.md)
    response = httpx.get(f"{hub.base_url}/health", headers=operator.auth, timeout=10)
    assert response.status_code == 200
    checks = response.json()["checks"]
    assert set(checks) == {"database", "redis", "broker", "worker:gpu.inference", "worker:gpu.training", "disk"}
    assert all(check["ok"] for check in checks.values())
    assert "pgvector" in checks["database"]["detail"]
    assert checks["worker:gpu.inference"]["detail"].startswith("inference@")


def test_interactive_docs_and_the_schema_include_chat_completions(hub):
    docs = httpx.get(f"{hub.base_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    # Served by the hub itself, so the page works offline.
    bundle = re.search(r'src="([^"]*swagger-ui-bundle\.js)"', docs.text).group(1)
    assert bundle.startswith("/static/")
    assert httpx.get(f"{hub.base_url}{bundle}").status_code == 200
    assert httpx.get(f"{hub.base_url}/static/admin/css/base.css").status_code == 200
    schema = httpx.get(f"{hub.base_url}/api/schema?format=json").json()
    for path in ("/api/v1/chat/completions", "/api/v1/chat/conversations", "/api/v1/models", "/health"):
        assert path in schema["paths"], path
    body = schema["paths"]["/api/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    request = schema["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"messages", "tools", "response_format", "logprobs"} <= set(request["properties"])


def test_the_admin_shows_every_model_to_staff(hub, alice, openai_client, models):
    openai_client.chat.completions.create(model=models["tiny"], max_tokens=2, messages=[{"role": "user",
                                                                                          "content": "x"}])
    admin = get_user_model().objects.create_superuser(username=f"root-{alice.user.username}", password="pw-123456")
    client = Client(SERVER_NAME="localhost")
    client.force_login(admin)
    for page in ("auth/user", "accounts/apikey", "catalog/modelentry", "chat/conversation", "chat/message",
                 "chat/generationrequest"):
        response = client.get(f"/admin/{page}/")
        assert response.status_code == 200, page
    listing = client.get("/admin/chat/generationrequest/").content.decode()
    assert "succeeded" in listing
    users = client.get(f"/admin/auth/user/?q={alice.user.username}").content.decode()
    assert 'class="field-requests">1<' in users  # usage per user


def test_an_api_key_made_in_the_admin_is_shown_once_and_works(hub, alice):
    admin = get_user_model().objects.create_superuser(username=f"ops-{alice.user.username}", password="pw-123456")
    client = Client(SERVER_NAME="localhost")
    client.force_login(admin)
    response = client.post("/admin/accounts/apikey/add/", {"user": alice.user.pk, "name": "from admin",
                                                           "scopes": ["inference"]}, follow=True)
    assert response.status_code == 200
    shown = re.findall(r"ahk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", response.content.decode())
    assert len(shown) == 1
    raw = shown[0]
    key = ApiKey.objects.get(user=alice.user, name="from admin")
    assert api_key_authenticate(raw_key=raw) == key and key.scopes == ["inference"]
    client.post("/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]})
    assert api_key_authenticate(raw_key=raw) is None


def test_requests_are_logged_to_the_app_log(hub, openai_client, models):
    from django.conf import settings

    openai_client.chat.completions.create(model=models["tiny"], max_tokens=2,
                                          messages=[{"role": "user", "content": "log me"}])
    log = (settings.AIHUB_LOG_DIR / "app.log").read_text()
    assert "workers.generation: request" in log
    assert "succeeded" in log or "tokens in" in log
