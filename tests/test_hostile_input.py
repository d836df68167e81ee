"""Hostile input costs one request bounded work and gets a 4xx; other users do not notice it."""
import json
import threading
import time

import httpx
from websockets.sync.client import connect

from apps.accounts.models import ApiKey
from apps.chat.models import GenerationRequest
from tests.conftest import make_account
from tests.test_errors import OK_MESSAGES, _assert_error, _nothing_stored, _post

NEWLINES = "\n" * 20_000  # backtracked quadratically in the old task-type patterns: ~60 s of held GIL
DEEP = b"[" * 100_000 + b"]" * 100_000  # Python's json recursed past the interpreter's limit: a 500


def _in_background(send) -> tuple[threading.Thread, dict]:
    outcome = {}

    def run():
        try:
            outcome["response"] = send()
        except httpx.HTTPError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_another_users_request_is_answered_promptly_while_hostile_ones_are_processed(hub, alice, bob):
    hostile_auto = _in_background(lambda: httpx.post(
        f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=120,
        # max_tokens no model allows: refused after routing, so no generation is queued
        json={"model": "auto", "max_tokens": 10**9, "messages": [{"role": "user", "content": NEWLINES + "hi"}]}))
    hostile_deep = _in_background(lambda: _post(hub, alice, raw=b'{"messages": ' + DEEP + b"}"))
    time.sleep(0.5)  # both have arrived and are being worked on

    started = time.monotonic()
    models = httpx.get(f"{hub.api_url}/models", headers=bob.auth, timeout=10)
    waited = time.monotonic() - started
    assert models.status_code == 200
    assert waited < 2.0, f"GET /models waited {waited:.1f} s behind the hostile requests"

    for thread, _ in (hostile_auto, hostile_deep):
        thread.join(timeout=30)
    _assert_error(hostile_auto[1]["response"], 400, code="context_length_exceeded", param="max_tokens")
    _assert_error(hostile_deep[1]["response"], 400, code="invalid_json")
    _nothing_stored(alice.user)


def test_json_nested_deeper_than_the_limit_is_a_400_on_chat_and_on_drf_endpoints(hub, alice):
    _assert_error(_post(hub, alice, raw=b'{"messages": ' + DEEP + b"}"), 400, code="invalid_json")
    # Deeper than AIHUB_MAX_JSON_DEPTH (32) but shallow enough for Python's parser: still refused.
    forty = b"[" * 40 + b"]" * 40
    error = _assert_error(_post(hub, alice, raw=b'{"messages": ' + forty + b"}"), 400, code="invalid_json")
    assert "at most 32 levels" in error["message"]
    _nothing_stored(alice.user)

    keys_before = ApiKey.objects.filter(user=alice.user).count()
    for body in (b'{"name": ' + DEEP + b"}", b'{"name": "deep", "scopes": ' + forty + b"}"):
        response = httpx.post(f"{hub.api_url}/keys", content=body, timeout=30,
                              headers={**alice.auth, "Content-Type": "application/json"})
        _assert_error(response, 400, code="invalid_json")
    assert ApiKey.objects.filter(user=alice.user).count() == keys_before


def test_text_the_database_cannot_store_is_a_400_naming_its_field_on_every_endpoint(hub, alice, models):
    # JSON may carry a NUL (\u0000) or half a surrogate pair (\ud800); neither can be stored as text.
    nul, lone = "\\u0000", "\\ud800"
    for raw, param in (
            (f'{{"model": "{models["tiny"]}", "messages": [{{"role": "user", "content": "a{nul}b"}}]}}',
             "messages.0.content"),
            (f'{{"model": "{models["tiny"]}", "messages": [{{"role": "user", "content": "{lone}"}}]}}',
             "messages.0.content"),
            (f'{{"model": "{models["tiny"]}", "messages": [], "stop": ["ok", "x{nul}"]}}', "stop.1")):
        error = _assert_error(_post(hub, alice, raw=raw.encode()), 400, code="invalid_value", param=param)
        assert "not allowed" in error["message"]
    _nothing_stored(alice.user)
    # The legacy completions endpoint stored its prompts' NUL in a jsonb column: a 500, found by the schema fuzz.
    response = httpx.post(f"{hub.api_url}/completions", timeout=30, headers={**alice.auth,
                          "Content-Type": "application/json"},
                          content=f'{{"model": "{models["tiny"]}", "prompt": ["", "a{nul}"]}}'.encode())
    _assert_error(response, 400, code="invalid_value", param="prompt.1")
    assert not GenerationRequest.objects.filter(user=alice.user).exists()
    # A key of an object is named by the object that holds it (the key itself is not echoed back).
    response = httpx.post(f"{hub.api_url}/keys", timeout=30, headers={**alice.auth,
                          "Content-Type": "application/json"}, content=f'{{"name": "k", "x{lone}": 1}}'.encode())
    _assert_error(response, 400, code="invalid_value", param=None)
    # And the websocket says the same, on a socket that stays open.
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
        ws.send(f'{{"type": "chat.completion", "request": {{"messages": [{{"role": "user", "content": "{nul}"}}]}}}}')
        error = json.loads(ws.recv(timeout=10))
        assert (error["type"], error["error"]["param"]) == ("error", "request.messages.0.content"), error
        ws.send(json.dumps({"type": "chat.completion", "request": {"model": models["tiny"], "max_tokens": 2,
                                                                   "messages": [{"role": "user", "content": "hi"}]}}))
        assert json.loads(ws.recv(timeout=10))["type"] == "accepted"


def test_a_body_over_the_size_limit_is_a_413_whether_declared_or_chunked(hub, alice):
    big = b'{"messages": [{"role": "user", "content": "' + b"a" * (4 * 2**20) + b'"}]}'
    _assert_error(_post(hub, alice, raw=big), 413, code="request_too_large")

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 2**16):
            yield big[start:start + 2**16]

    chunked = httpx.post(f"{hub.api_url}/chat/completions", content=chunks(), timeout=30,
                         headers={**alice.auth, "Content-Type": "application/json"})
    _assert_error(chunked, 413, code="request_too_large")
    _nothing_stored(alice.user)

    # Other JSON endpoints take small objects (AIHUB_MAX_REQUEST_BYTES, 1 MiB).
    response = httpx.post(f"{hub.api_url}/keys", json={"name": "x" * (2**20 + 1)}, headers=alice.auth, timeout=30)
    _assert_error(response, 413, code="request_too_large")
    assert ApiKey.objects.filter(user=alice.user).count() == 1


def test_a_prompt_over_the_character_limit_is_refused_by_its_size_not_its_tokens(hub, alice):
    messages = [{"role": "user", "content": "word " * 100_000}, {"role": "user", "content": "x" * 500_001}]
    error = _assert_error(_post(hub, alice, {"messages": messages}), 400, code="invalid_value", param="messages")
    assert "at most 1000000" in error["message"]
    _nothing_stored(alice.user)


def _chat(account, hub, models, **fields):
    return _post(hub, account, {"model": models["tiny"], "max_tokens": 1, "messages": OK_MESSAGES, **fields})


def test_pinning_or_unloading_through_keep_alive_needs_an_admin_key(hub, alice, models):
    for keep_alive in (-1, 0):
        error = _assert_error(_chat(alice, hub, models, keep_alive=keep_alive), 403, code="insufficient_scope",
                              param="keep_alive", type="permission_error")
        assert "admin" in error["message"]
    _nothing_stored(alice.user)

    # Within the operator's bound, any inference key may lengthen or shorten it.
    accepted = _chat(alice, hub, models, keep_alive=60)
    assert accepted.status_code == 200, accepted.text
    assert GenerationRequest.objects.get(user=alice.user).params["keep_alive"] == 60

    ops = make_account("ops", staff=True, scopes=["inference", "admin"])
    for keep_alive in (-1, 0):  # pin, then unload again: the hub is left as it was
        response = _chat(ops, hub, models, keep_alive=keep_alive)
        assert response.status_code == 200, response.text
    assert sorted(GenerationRequest.objects.filter(user=ops.user).values_list("params__keep_alive", flat=True)) \
        == [-1, 0]

