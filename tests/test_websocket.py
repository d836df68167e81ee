"""/ws/v1/chat/: auth without the key in the URL, ordered events, cancel, resume."""
import json
import time
from contextlib import contextmanager

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from apps.chat.models import GenerationRequest, Message

HELLO = [{"role": "user", "content": "Hello there, tell me a story."}]


def _recv(ws, timeout=30):
    return json.loads(ws.recv(timeout=timeout))


@contextmanager
def _open(hub, account=None, *, header=False):
    headers = account.auth if (account and header) else None
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=headers, open_timeout=10) as ws:
        if account and header:
            assert _recv(ws)["type"] == "authenticated"
        elif account:
            ws.send(json.dumps({"type": "auth", "api_key": account.raw_key}))
            assert _recv(ws) == {"type": "authenticated", "user": account.user.username}
        yield ws


def _collect(ws, request_id=None, *, until=("done", "error"), limit=None):
    events = []
    while True:
        event = _recv(ws)
        if request_id:
            assert event["request_id"] == request_id
        events.append(event)
        if event["type"] in until or (limit and len(events) >= limit):
            return events


def _start(ws, body, **extra):
    ws.send(json.dumps({"type": "chat.completion", "request": body, **extra}))
    accepted = _recv(ws)
    assert accepted["type"] == "accepted", accepted
    return accepted["request_id"]


def test_it_streams_ordered_tokens_then_done_with_usage(hub, alice, models, openai_client):
    body = {"model": models["tiny"], "messages": HELLO, "max_tokens": 25, "temperature": 0}
    with _open(hub, alice) as ws:
        request_id = _start(ws, body)
        events = _collect(ws, request_id)
    tokens, done = events[:-1], events[-1]
    assert all(e["type"] == "token" for e in tokens)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 25
    text = "".join(e["text"] for e in tokens)
    assert text == openai_client.chat.completions.create(**body).choices[0].message.content
    assert GenerationRequest.objects.get(id=request_id).completion == text


def test_the_key_may_come_in_the_authorization_header(hub, alice, models):
    with _open(hub, alice, header=True) as ws:
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 3})
        assert _collect(ws, request_id)[-1]["type"] == "done"


def test_it_refuses_requests_before_authentication(hub, models):
    with _open(hub) as ws:
        ws.send(json.dumps({"type": "chat.completion", "request": {"messages": HELLO}}))
        error = _recv(ws)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd.code == 4401


@pytest.mark.parametrize("header", [False, True])
def test_a_wrong_or_revoked_key_is_refused(hub, alice, header):
    alice.key.revoke()
    headers = alice.auth if header else None
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=headers) as ws:
        if not header:
            ws.send(json.dumps({"type": "auth", "api_key": alice.raw_key}))
        assert _recv(ws)["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def test_bad_messages_get_errors_and_the_socket_stays_usable(hub, alice, models):
    with _open(hub, alice) as ws:
        ws.send("not json")
        assert _recv(ws)["error"]["code"] == "invalid_message"
        ws.send("[" * 100_000)  # nested past any limit: refused as a message, the socket lives on
        assert _recv(ws)["error"]["code"] == "invalid_message"
        ws.send(json.dumps({"type": "dance"}))
        assert _recv(ws)["error"]["param"] == "type"
        ws.send(json.dumps({"type": "chat.completion", "request": {"messages": []}}))
        assert _recv(ws)["error"]["param"] == "messages"
        ws.send(json.dumps({"type": "chat.completion", "request": {"model": "nope", "messages": HELLO}}))
        assert _recv(ws)["error"]["code"] == "model_not_found"
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 2})
        assert _collect(ws, request_id)[-1]["type"] == "done"


def test_cancel_stops_the_generation_within_a_second_and_frees_the_worker(hub, alice, models):
    with _open(hub, alice) as ws:
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 3500})
        _collect(ws, request_id, limit=5)
        cancelled_at = time.monotonic()
        ws.send(json.dumps({"type": "cancel", "request_id": request_id}))
        done = _collect(ws, request_id)[-1]
        assert time.monotonic() - cancelled_at < 1.0
        assert done["type"] == "done" and done["finish_reason"] == "cancelled"
        generation = GenerationRequest.objects.get(id=request_id)
        assert generation.state == GenerationRequest.State.CANCELLED
        assert generation.completion_tokens < 3500
        # The worker is free: the next request is answered at once.
        started = time.monotonic()
        next_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 2})
        assert _collect(ws, next_id)[-1]["type"] == "done"
        assert time.monotonic() - started < 5


def test_closing_the_socket_cancels_a_request_without_a_resume_grace(hub, alice, models):
    with _open(hub, alice) as ws:
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 3500})
        _collect(ws, request_id, limit=3)
    deadline = time.monotonic() + 1.5
    while GenerationRequest.objects.get(id=request_id).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert GenerationRequest.objects.get(id=request_id).state == GenerationRequest.State.CANCELLED


def test_a_client_resumes_after_reconnecting_without_losing_or_repeating_tokens(hub, alice, models):
    body = {"model": models["tiny"], "messages": HELLO, "max_tokens": 400, "temperature": 0}
    with _open(hub, alice) as ws:
        request_id = _start(ws, body, resume_grace_seconds=30)
        before = _collect(ws, request_id, limit=5)
    time.sleep(0.3)  # tokens keep coming while nobody listens
    last_seen = before[-1]["seq"]
    with _open(hub, alice) as ws:
        ws.send(json.dumps({"type": "resume", "request_id": request_id, "after_seq": last_seen}))
        after = _collect(ws, request_id)
    events = before + after
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "length"
    text = "".join(e["text"] for e in events if e["type"] == "token")
    assert text == GenerationRequest.objects.get(id=request_id).completion
    assert Message.objects.get(generation_id=request_id).content == text


def test_a_finished_request_can_be_replayed_from_any_point(hub, alice, models):
    with _open(hub, alice) as ws:
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 10})
        events = _collect(ws, request_id)
        # The engine may put several tokens in one event: how many events there are is not fixed.
        for after_seq in range(len(events)):
            ws.send(json.dumps({"type": "resume", "request_id": request_id, "after_seq": after_seq}))
            assert _collect(ws, request_id) == events[after_seq:]
        # At the final event or past the end, nothing can come: a clear error, not a silent wait.
        for after_seq, code in ((len(events), "stream_ended"), (len(events) + 5, "invalid_value")):
            ws.send(json.dumps({"type": "resume", "request_id": request_id, "after_seq": after_seq}))
            error = _recv(ws)
            assert (error["type"], error["request_id"]) == ("error", request_id)
            assert (error["error"]["param"], error["error"]["code"]) == ("after_seq", code)


def test_a_rest_request_that_waited_for_its_whole_answer_can_be_read_whole_over_the_socket(hub, alice, models):
    """A client that does not stream gets no per-token events written for it: its text goes to the log at most
    every HELD_TEXT_SECONDS (workers/generation.py). The log stays complete: a websocket resuming the request
    reads the whole answer, in fewer pieces."""
    import uuid

    import httpx

    from workers.generation import HELD_TEXT_SECONDS

    body = {"model": models["default"], "messages": HELLO, "max_tokens": 60, "ignore_eos": True}
    started = time.monotonic()
    answer = httpx.post(f"{hub.api_url}/chat/completions", json=body, headers=alice.auth, timeout=120)
    seconds = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    request_id = str(uuid.UUID(answer.json()["id"].removeprefix("chatcmpl-")))
    with _open(hub, alice) as ws:
        ws.send(json.dumps({"type": "resume", "request_id": request_id, "after_seq": 0}))
        events = _collect(ws, request_id)
    tokens = [event for event in events if event["type"] == "token"]
    assert "".join(event["text"] for event in tokens) == answer.json()["choices"][0]["message"]["content"]
    assert events[-1]["usage"]["completion_tokens"] == 60
    # One write per interval at most, and the rest with `done` (streamed, the real model writes about one per
    # token: some 60 here).
    assert len(tokens) <= seconds / HELD_TEXT_SECONDS + 1, (len(tokens), seconds)


def test_nobody_else_can_resume_or_cancel_my_request(hub, alice, bob, models):
    with _open(hub, alice) as ws:
        request_id = _start(ws, {"model": models["tiny"], "messages": HELLO, "max_tokens": 200})
        with _open(hub, bob) as other:
            for kind in ("resume", "cancel"):
                other.send(json.dumps({"type": kind, "request_id": request_id, "after_seq": 0}))
                error = _recv(other)
                assert error["error"]["code"] == "not_found" and error["error"]["param"] == "request_id"
            other.send(json.dumps({"type": "resume", "request_id": "garbage"}))
            assert _recv(other)["error"]["code"] == "not_found"
        assert _collect(ws, request_id)[-1]["finish_reason"] == "length"


def test_a_browser_from_a_foreign_origin_is_refused(hub):
    with pytest.raises(InvalidStatus) as refused:
        connect(f"{hub.ws_url}/ws/v1/chat/", origin="http://evil.example", open_timeout=5)
    assert refused.value.response.status_code == 403
    with connect(f"{hub.ws_url}/ws/v1/chat/", origin="http://localhost:8000", open_timeout=5) as ws:
        ws.send(json.dumps({"type": "cancel"}))
        assert _recv(ws)["error"]["code"] == "invalid_api_key"
