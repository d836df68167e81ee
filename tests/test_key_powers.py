"""Keys made by keys stay within their parent's powers and budget; stopped keys stop their sockets and requests."""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_create
from apps.chat.models import GenerationRequest
from tests.conftest import RUN_DIR, make_account
from tests.support.busy import inference_worker_full
from tests.support.fine_tuning import SECRET, job_create, job_finished, job_get, jsonl, upload, wait_for
from tests.support.processes import ProcessGroup, wait_until_healthy

HI = [{"role": "user", "content": "hi"}]
HELLO = [{"role": "user", "content": "Hello there, tell me a story."}]
LONG = {"model": "tiny:chat", "messages": HELLO, "max_tokens": 4000, "ignore_eos": True}


def _mint(hub, parent, **body) -> httpx.Response:
    return httpx.post(f"{hub.api_url}/keys", headers=parent.auth, json=body, timeout=30)


def _minted(hub, parent, **body) -> dict:
    response = _mint(hub, parent, **body)
    assert response.status_code == 201, response.text
    return response.json()


def _auth(raw_key: str) -> dict:
    return {"Authorization": f"Bearer {raw_key}"}


def _chat(hub, auth, **extra) -> httpx.Response:
    return httpx.post(f"{hub.api_url}/chat/completions", headers=auth, timeout=60,
                      json={"model": "tiny:chat", "messages": HI, "max_tokens": 2, **extra})


def _error(response, status, code, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and (param is None or error["param"] == param), error
    return error


class MintedKey:
    """A key made over POST /keys, usable where the helpers take an account."""

    def __init__(self, minted: dict):
        self.raw_key = minted["key"]
        self.auth = _auth(minted["key"])


def _limit(account, **limits):
    """What an operator does: set a key's limits in the admin or the database."""
    ApiKey.objects.filter(pk=account.key.pk).update(**limits)


# --- minting within one's powers -------------------------------------------------------------------------------

def test_a_minted_key_keeps_its_parents_expiry_and_limits_and_is_refused_beyond_them(hub, models):
    parent = make_account("parent", expires_at=timezone.now() + timedelta(hours=2))
    _limit(parent, tokens_per_minute=500, token_budget=5000, budget_period_days=1)

    child = _minted(hub, parent, name="child")
    assert datetime.fromisoformat(child["expires_at"]) == parent.key.expires_at
    assert child["tokens_per_minute"] == 500 and child["token_budget"] == 5000 and child["parent"] == parent.key.id

    narrow = _minted(hub, parent, tokens_per_minute=60)
    assert narrow["tokens_per_minute"] == 60 and narrow["token_budget"] == 5000
    _error(_chat(hub, _auth(narrow["key"]), max_tokens=100), 429, "rate_limit_exceeded")
    assert _chat(hub, _auth(narrow["key"]), max_tokens=20).status_code == 200
    # The parent itself may still send what its narrower child may not.
    assert _chat(hub, parent.auth, max_tokens=100).status_code == 200


def test_keys_of_one_family_share_one_budget(hub, models):
    root = make_account("family")
    _limit(root, token_budget=150, budget_period_days=1)
    child = _minted(hub, root, name="child")
    grandchild = _minted(hub, MintedKey(child), name="grandchild")

    for _ in range(30):  # each request costs about 40 tokens of the 150
        response = _chat(hub, root.auth, max_tokens=10)
        if response.status_code != 200:
            break
    _error(response, 429, "insufficient_quota")
    for minted in (child, grandchild):
        _error(_chat(hub, _auth(minted["key"]), max_tokens=10), 429, "insufficient_quota")

    # A key an operator makes for the same user is a new family with its own budget.
    _, raw = api_key_create(user=root.user, name="operator-made")
    assert _chat(hub, _auth(raw), max_tokens=10).status_code == 200


def test_a_key_cannot_mint_a_later_expiry_or_looser_limits(hub):
    parent = make_account("bounded", expires_at=timezone.now() + timedelta(days=3))
    _limit(parent, requests_per_minute=5, max_concurrent_generations=2)

    error = _error(_mint(hub, parent, expires_in_days=4), 403, "beyond_key_powers", "expires_in_days")
    assert "cannot outlive" in error["message"]
    _error(_mint(hub, parent, requests_per_minute=10), 403, "beyond_key_powers", "requests_per_minute")
    _error(_mint(hub, parent, requests_per_minute=0), 403, "beyond_key_powers", "requests_per_minute")  # unlimited
    _error(_mint(hub, parent, max_concurrent_generations=3), 403, "beyond_key_powers", "max_concurrent_generations")
    _error(_mint(hub, parent, token_budget=-1), 400, "invalid_value", "token_budget")

    child = _minted(hub, parent, requests_per_minute=2, expires_in_days=1)
    # The grandchild is held to the child's tighter limit, not the parent's.
    _error(_mint(hub, MintedKey(child), requests_per_minute=3), 403, "beyond_key_powers", "requests_per_minute")
    assert ApiKey.objects.filter(user=parent.user).count() == 2  # refusals store nothing


def test_revoking_a_key_revokes_the_keys_it_minted_at_any_depth(hub, models):
    parent = make_account("leaky")
    child = _minted(hub, parent)
    grandchild = _minted(hub, MintedKey(child))
    sibling = make_account("other")  # an operator-made key of someone else: untouched

    response = httpx.delete(f"{hub.api_url}/keys/{parent.key.id}", headers=parent.auth, timeout=30)
    assert response.status_code == 200, response.text

    for raw in (child["key"], grandchild["key"]):
        _error(_chat(hub, _auth(raw)), 401, "invalid_api_key")
    assert _chat(hub, sibling.auth).status_code == 200


# --- stopped keys stop their websockets and requests ---------------------------------------------------------------

def _recv(ws, timeout=30):
    return json.loads(ws.recv(timeout=timeout))


@contextmanager
def _socket(base_ws_url, account):
    with connect(f"{base_ws_url}/ws/v1/chat/", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "auth", "api_key": account.raw_key}))
        assert _recv(ws)["type"] == "authenticated"
        yield ws


def _start(ws, body):
    ws.send(json.dumps({"type": "chat.completion", "request": body}))
    accepted = _recv(ws)
    assert accepted["type"] == "accepted", accepted
    return accepted["request_id"]


def _works(ws):
    _start(ws, {"model": "tiny:chat", "messages": HI, "max_tokens": 2})
    while _recv(ws)["type"] not in ("done", "error"):
        pass


def _closed_with_an_auth_error(ws, timeout=10):
    error = _recv(ws, timeout)
    while error["type"] == "token":  # events already on their way
        error = _recv(ws, timeout)
    assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key", error
    assert error["error"]["type"] == "authentication_error"
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    assert closed.value.rcvd.code == 4401


def _refused_at_next_message(ws, user):
    before = GenerationRequest.objects.filter(user=user).count()
    ws.send(json.dumps({"type": "chat.completion", "request": {"model": "tiny:chat", "messages": HI}}))
    _closed_with_an_auth_error(ws)
    assert GenerationRequest.objects.filter(user=user).count() == before


def _staff_client():
    admin = get_user_model().objects.create_superuser(username=f"keys-admin-{time.monotonic_ns()}",
                                                      password="pw-123456")
    client = Client(SERVER_NAME="localhost")
    client.force_login(admin)
    return client


def _deactivate_in_admin(user):
    response = _staff_client().post("/admin/auth/user/", {"action": "deactivate_users",
                                                          "_selected_action": [user.pk]}, follow=True)
    assert response.status_code == 200


def test_an_open_websocket_stops_at_its_next_message_once_its_key_is_revoked(hub, models):
    account = make_account("revoked-ws")
    other = _minted(hub, account, name="other")
    with _socket(hub.ws_url, account) as ws:
        _works(ws)
        revoked = httpx.delete(f"{hub.api_url}/keys/{account.key.id}", headers=_auth(other["key"]))
        assert revoked.status_code == 200 and revoked.json()["active"] is False
        _refused_at_next_message(ws, account.user)


def test_an_open_websocket_stops_at_its_next_message_once_its_key_expires(hub, models):
    account = make_account("expiring-ws", expires_at=timezone.now() + timedelta(seconds=4))
    with _socket(hub.ws_url, account) as ws:
        _works(ws)
        time.sleep(max(0.0, (account.key.expires_at - timezone.now()).total_seconds()) + 0.2)
        _refused_at_next_message(ws, account.user)


def test_an_open_websocket_stops_at_its_next_message_once_its_user_is_deactivated(hub, models):
    account = make_account("deactivated-ws")
    with _socket(hub.ws_url, account) as ws:
        _works(ws)
        _deactivate_in_admin(account.user)
        _refused_at_next_message(ws, account.user)


@contextmanager
def _long_stream(hub, account):
    """A streaming generation that would run for thousands of tokens; yields its id once tokens flow."""
    with httpx.stream("POST", f"{hub.api_url}/chat/completions", headers=account.auth, timeout=60,
                      json={**LONG, "stream": True}) as response:
        assert response.status_code == 200
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(6):  # the role chunk and five tokens
            next(lines)
        yield response.headers["x-aihub-request-id"], lines


def _finish_reason(lines) -> str:
    reasons = [json.loads(line[6:])["choices"][0]["finish_reason"] for line in lines
               if line != "data: [DONE]" and json.loads(line[6:]).get("choices")]
    return [reason for reason in reasons if reason][-1]


def _assert_cancelled(request_id, since: float):
    generation = GenerationRequest.objects.get(id=request_id)
    assert generation.state == GenerationRequest.State.CANCELLED, generation.state
    assert generation.completion_tokens < LONG["max_tokens"]
    assert time.monotonic() - since < 5


def test_revoking_a_key_cancels_its_running_generation(hub, models):
    account = make_account("revoked-stream")
    other = _minted(hub, account, name="other")
    with _long_stream(hub, account) as (request_id, lines):
        revoked_at = time.monotonic()
        assert httpx.delete(f"{hub.api_url}/keys/{account.key.id}", headers=_auth(other["key"])).status_code == 200
        assert _finish_reason(lines) == "cancelled"
    _assert_cancelled(request_id, revoked_at)


def test_a_request_whose_key_stops_while_it_waits_in_the_queue_is_refused_by_the_worker(hub, models):
    waiting = make_account("waiting")
    with ThreadPoolExecutor(1) as pool:
        with inference_worker_full(hub, models["tiny"]):
            answer = pool.submit(_chat, hub, waiting.auth)  # waits in the queue while the worker is full
            wait_for(lambda: GenerationRequest.objects.filter(user=waiting.user).values_list(
                "state", flat=True).first(), lambda state: state == GenerationRequest.State.QUEUED, timeout=30)
            waiting.key.revoke()  # only the row: as if revoked in the instant after the request was admitted
        response = answer.result(timeout=60)
    _error(response, 401, "invalid_api_key")
    assert GenerationRequest.objects.get(user=waiting.user).completion_tokens == 0


def test_revoking_a_key_cancels_its_training_job(hub, models):
    account = make_account("revoked-trainer")
    _, other = api_key_create(user=account.user, name="operator-made")  # not minted from it: survives
    data = upload(hub, account, jsonl(SECRET))
    created = job_create(hub, account, training_file=data["id"], num_epochs=100, batch_size=1)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    wait_for(lambda: job_get(hub, account, job_id), lambda j: j["status"] == "running")

    assert httpx.delete(f"{hub.api_url}/keys/{account.key.id}", headers=_auth(other)).status_code == 200
    assert job_finished(hub, MintedKey({"key": other}), job_id, timeout=60)["status"] == "cancelled"


def test_deactivating_a_user_in_the_admin_cancels_their_running_generation(hub, models):
    account = make_account("deactivated-stream")
    with _long_stream(hub, account) as (request_id, lines):
        deactivated_at = time.monotonic()
        _deactivate_in_admin(account.user)
        assert _finish_reason(lines) == "cancelled"
    _assert_cancelled(request_id, deactivated_at)
    _error(_chat(hub, account.auth), 401, "invalid_api_key")


@pytest.fixture(scope="module")
def quick_recheck_ws_url(hub):
    """Another daphne on the same services that re-reads streaming sockets' keys every 0.3 s."""
    from aihub_project.embedded import free_port

    port = free_port()
    processes = ProcessGroup(dict(os.environ), RUN_DIR / "logs")
    processes.start_web(port, name="web-key-recheck", env={"AIHUB_WS_KEY_RECHECK_SECONDS": "0.3"})
    wait_until_healthy(f"http://127.0.0.1:{port}", processes)
    yield f"ws://127.0.0.1:{port}"
    processes.stop()


def test_a_listening_websocket_stops_streaming_when_its_key_expires(hub, models, quick_recheck_ws_url):
    account = make_account("expiring-stream")
    with _socket(quick_recheck_ws_url, account) as ws:
        request_id = _start(ws, LONG)
        for _ in range(5):
            assert _recv(ws)["type"] == "token"
        # The key expires while the client only listens: it sends nothing more.
        ApiKey.objects.filter(pk=account.key.pk).update(expires_at=timezone.now() + timedelta(seconds=0.3))
        expired_at = time.monotonic()
        _closed_with_an_auth_error(ws, timeout=5)
    deadline = time.monotonic() + 3
    while GenerationRequest.objects.get(id=request_id).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    _assert_cancelled(request_id, expired_at)
