"""Keys: scopes, expiry, revocation, self-service over /api/v1/keys, and ownership everywhere."""
import json
from datetime import timedelta

import httpx
import openai
import pytest
from django.utils import timezone
from websockets.sync.client import connect

from tests.conftest import make_account

HI = [{"role": "user", "content": "hi"}]


def _error(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    return response.json()["error"]


def test_a_key_without_the_inference_scope_cannot_chat(hub, models):
    trainer = make_account("trainer", scopes=["training"])
    _error(httpx.post(f"{hub.api_url}/chat/completions", headers=trainer.auth,
                      json={"model": models["tiny"], "messages": HI}), 403, "insufficient_scope")
    _error(httpx.get(f"{hub.api_url}/models", headers=trainer.auth), 403, "insufficient_scope")
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=trainer.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "insufficient_scope"


def test_an_expired_key_is_refused_at_once(hub, models):
    account = make_account("late", expires_at=timezone.now() + timedelta(seconds=60))
    assert httpx.get(f"{hub.api_url}/models", headers=account.auth).status_code == 200
    account.key.expires_at = timezone.now() - timedelta(seconds=1)
    account.key.save()
    _error(httpx.get(f"{hub.api_url}/models", headers=account.auth), 401, "invalid_api_key")
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=account.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["error"]["code"] == "invalid_api_key"


def test_the_admin_scope_needs_a_staff_user(hub):
    plain = make_account("plain", scopes=["inference", "training"])
    response = httpx.post(f"{hub.api_url}/keys", headers=plain.auth, json={"scopes": ["admin"]})
    _error(response, 403, "insufficient_scope")
    staff_without_scope = make_account("staffer", staff=True)
    _error(httpx.get(f"{hub.api_url}/models/status", headers=staff_without_scope.auth), 403, "insufficient_scope")
    operator = make_account("operator", staff=True, scopes=["inference", "admin"])
    assert httpx.get(f"{hub.api_url}/models/status", headers=operator.auth).status_code == 200


def test_a_user_manages_its_own_keys(hub, alice, bob):
    created = httpx.post(f"{hub.api_url}/keys", headers=alice.auth,
                         json={"name": "laptop", "scopes": ["inference"], "expires_in_days": 30})
    assert created.status_code == 201, created.text
    body = created.json()
    raw = body["key"]
    assert raw.startswith(body["prefix"]) and body["scopes"] == ["inference"] and body["expires_at"]
    new_auth = {"Authorization": f"Bearer {raw}"}
    assert httpx.get(f"{hub.api_url}/models", headers=new_auth).status_code == 200

    listed = httpx.get(f"{hub.api_url}/keys", headers=alice.auth).json()["data"]
    assert {k["name"] for k in listed} == {"tests", "laptop"}
    assert raw not in json.dumps(listed) and all("key" not in k for k in listed)
    assert [k["name"] for k in httpx.get(f"{hub.api_url}/keys", headers=bob.auth).json()["data"]] == ["tests"]

    # Another user's key is not found; one's own is revoked and refused at once.
    _error(httpx.delete(f"{hub.api_url}/keys/{body['id']}", headers=bob.auth), 404, "not_found")
    revoked = httpx.delete(f"{hub.api_url}/keys/{body['id']}", headers=alice.auth)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    _error(httpx.get(f"{hub.api_url}/models", headers=new_auth), 401, "invalid_api_key")


def test_a_key_cannot_grant_scopes_it_lacks(hub):
    narrow = make_account("narrow", scopes=["inference"])
    _error(httpx.post(f"{hub.api_url}/keys", headers=narrow.auth, json={"scopes": ["training"]}), 403,
           "insufficient_scope")
    bad = httpx.post(f"{hub.api_url}/keys", headers=narrow.auth, json={"scopes": ["root"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "scopes.0"


def test_no_request_body_can_set_the_owner_or_stored_fields(hub, alice, bob, openai_client, models):
    # Keys that name stored fields are refused by name (never silently dropped), and nothing is stored.
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model=models["tiny"], max_tokens=2, messages=HI,
            extra_body={"user_id": bob.user.id, "state": "succeeded", "usage": {"prompt_tokens": 0}})
    assert refused.value.body["code"] == "unsupported_parameter" and refused.value.body["param"] == "user_id"
    from apps.chat.models import GenerationRequest

    assert not GenerationRequest.objects.filter(user__in=[alice.user, bob.user]).exists()
    patched = httpx.patch(f"{hub.api_url}/me", headers=alice.auth, json={"is_staff": True, "username": "root"})
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "unsupported_parameter"
    me = httpx.get(f"{hub.api_url}/me", headers=alice.auth).json()
    assert me["is_staff"] is False and me["username"] == alice.user.username


@pytest.mark.parametrize("method, path", [
    ("GET", "/chat/conversations/{conversation}"),
    ("DELETE", "/chat/conversations/{conversation}"),
    ("DELETE", "/keys/{key}"),
])
def test_every_object_endpoint_hides_other_users_objects(hub, alice, bob, openai_client, models, method, path):
    completion = openai_client.chat.completions.create(model=models["tiny"], max_tokens=1, messages=HI)
    ids = {"conversation": completion.model_extra["conversation_id"], "key": alice.key.id}
    response = httpx.request(method, f"{hub.api_url}{path.format(**ids)}", headers=bob.auth)
    assert response.status_code == 404, response.text
    # ...and the object is untouched for its owner.
    assert httpx.get(f"{hub.api_url}/chat/conversations/{ids['conversation']}", headers=alice.auth).status_code == 200
    assert httpx.get(f"{hub.api_url}/models", headers=alice.auth).status_code == 200
