"""Bad input gets OpenAI's error shape, the right status, and stores nothing."""
import httpx
import pytest

from apps.chat.models import Conversation, GenerationRequest, Message

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _post(hub, account, body=None, *, raw: bytes | None = None, headers=None):
    headers = {**(account.auth if account else {}), **(headers or {})}
    if raw is not None:
        return httpx.post(f"{hub.api_url}/chat/completions", content=raw, timeout=30,
                          headers={**headers, "Content-Type": "application/json"})
    return httpx.post(f"{hub.api_url}/chat/completions", json=body, headers=headers, timeout=30)


def _assert_error(response, status, *, code=None, param=None, type=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    if type is not None:
        assert error["type"] == type
    return error


def _nothing_stored(user):
    assert not Conversation.objects.filter(user=user).exists()
    assert not GenerationRequest.objects.filter(user=user).exists()
    assert not Message.objects.filter(conversation__user=user).exists()


def test_malformed_json_is_a_400(hub, alice):
    _assert_error(_post(hub, alice, raw=b'{"messages": [}'), 400, code="invalid_json")
    _assert_error(_post(hub, alice, raw=b'["a list"]'), 400, code="invalid_json")
    _nothing_stored(alice.user)


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, "messages.0.content"),
    ({"messages": [{"role": 3, "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]}, "messages.0.content"),
    ({"messages": OK_MESSAGES, "temperature": "hot"}, "temperature"),
    ({"messages": OK_MESSAGES, "temperature": 3}, "temperature"),
    ({"messages": OK_MESSAGES, "stream": "yes"}, "stream"),
    ({"messages": OK_MESSAGES, "max_tokens": 0}, "max_tokens"),
    ({"messages": OK_MESSAGES, "max_tokens": "10"}, "max_tokens"),
    ({"messages": OK_MESSAGES, "n": 9}, "n"),  # over AIHUB_MAX_N (8)
    ({"messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": OK_MESSAGES, "stop": "x" * 257}, "stop"),
    ({"messages": OK_MESSAGES, "stop": ["ok", "x" * 200_000]}, "stop"),
    ({"messages": OK_MESSAGES * 2049}, "messages"),
    ({"messages": OK_MESSAGES, "keep_alive": 3601}, "keep_alive"),
    ({"messages": OK_MESSAGES, "keep_alive": -0.5}, "keep_alive"),
    ({"messages": OK_MESSAGES, "model": "m" * 201}, "model"),
    ({"messages": OK_MESSAGES, "model": 5}, "model"),
    ({"messages": OK_MESSAGES, "conversation_id": "not-a-uuid"}, "conversation_id"),
])
def test_invalid_requests_are_400_with_the_offending_param(hub, alice, body, param):
    error = _assert_error(_post(hub, alice, body), 400, param=param, type="invalid_request_error",
                          code="invalid_value")
    assert param.split(".")[-1] in error["message"]
    _nothing_stored(alice.user)


def test_image_input_to_a_text_model_is_refused_clearly(hub, alice, models):
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    _assert_error(_post(hub, alice, {"model": models["tiny"], "messages": [{"role": "user", "content": content}]}),
                  400, code="model_not_supported", param="messages")
    _nothing_stored(alice.user)


def test_an_unknown_model_is_a_404_model_not_found(hub, alice):
    _assert_error(_post(hub, alice, {"model": "nope:1b", "messages": OK_MESSAGES}), 404,
                  code="model_not_found", param="model")
    _nothing_stored(alice.user)


def test_max_tokens_over_the_models_limit_is_a_400(hub, alice, models):
    _assert_error(_post(hub, alice, {"model": models["tiny"], "messages": OK_MESSAGES, "max_tokens": 100000}),
                  400, code="context_length_exceeded", param="max_tokens")
    _nothing_stored(alice.user)


def test_a_models_own_max_tokens_cap_applies(hub, alice, models):
    from apps.catalog.models import ModelEntry

    ModelEntry.objects.filter(id=models["tiny"]).update(max_completion_tokens=3500)
    try:
        error = _assert_error(_post(hub, alice, {"model": models["tiny"], "messages": OK_MESSAGES,
                                                 "max_tokens": 3501}), 400, param="max_tokens")
        assert "at most 3500" in error["message"]
    finally:
        ModelEntry.objects.filter(id=models["tiny"]).update(max_completion_tokens=None)
    _nothing_stored(alice.user)


def test_a_prompt_far_beyond_the_context_is_refused_before_queueing(hub, alice, models):
    huge = "word " * 40000
    _assert_error(_post(hub, alice, {"model": models["tiny"], "messages": [{"role": "user", "content": huge}]}),
                  400, code="context_length_exceeded", param="messages")
    _nothing_stored(alice.user)


def test_a_prompt_longer_than_the_context_fails_cleanly(hub, alice, models):
    long_text = "The quick brown fox jumps over the lazy dog. " * 600
    response = _post(hub, alice, {"model": models["tiny"], "max_tokens": 10,
                                  "messages": [{"role": "user", "content": long_text}]})
    _assert_error(response, 400, code="context_length_exceeded")
    generation = GenerationRequest.objects.get(user=alice.user)
    assert generation.state == GenerationRequest.State.FAILED
    assert not Message.objects.filter(conversation__user=alice.user, role="assistant").exists()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer ahk_0000_wrong"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_a_missing_or_wrong_key_is_a_401(hub, headers):
    response = _post(hub, None, {"messages": OK_MESSAGES}, headers=headers)
    _assert_error(response, 401, code="invalid_api_key", type="authentication_error")
    response = httpx.get(f"{hub.api_url}/models", headers=headers)
    _assert_error(response, 401, code="invalid_api_key")


def test_a_revoked_key_is_refused_at_once(hub, alice):
    assert httpx.get(f"{hub.api_url}/models", headers=alice.auth).status_code == 200
    alice.key.revoke()
    _assert_error(httpx.get(f"{hub.api_url}/models", headers=alice.auth), 401, code="invalid_api_key")
    _assert_error(_post(hub, alice, {"messages": OK_MESSAGES}), 401, code="invalid_api_key")


def test_someone_elses_conversation_cannot_be_continued(hub, alice, bob, openai_client, models):
    first = openai_client.chat.completions.create(model=models["tiny"], messages=OK_MESSAGES, max_tokens=2)
    conversation_id = first.model_extra["conversation_id"]
    response = _post(hub, bob, {"model": models["tiny"], "messages": OK_MESSAGES,
                                "conversation_id": conversation_id})
    _assert_error(response, 404, code="conversation_not_found")
    _nothing_stored(bob.user)
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2


def test_unknown_urls_and_wrong_methods_answer_in_the_error_shape(hub, alice):
    _assert_error(httpx.get(f"{hub.api_url}/nothing-here", headers=alice.auth), 404)
    _assert_error(httpx.get(f"{hub.api_url}/chat/completions", headers=alice.auth), 405)
    _assert_error(httpx.post(f"{hub.api_url}/models", headers=alice.auth, json={}), 405)
