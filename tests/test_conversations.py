"""History: list (own only, paginated), detail with messages, delete; and the model list."""
import httpx

from apps.chat.models import Conversation, GenerationRequest, Message


def _chat(openai_client, models, text="Hi", **extra):
    return openai_client.chat.completions.create(
        model=models["tiny"], max_tokens=3, messages=[{"role": "user", "content": text}], **extra)


def test_it_lists_only_my_conversations_newest_first(hub, alice, bob, openai_client, models):
    ids = [_chat(openai_client, models, f"question {i}").model_extra["conversation_id"] for i in range(3)]
    response = httpx.get(f"{hub.api_url}/chat/conversations", headers=alice.auth)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["total"] == 3 and body["has_more"] is False
    assert [c["id"] for c in body["data"]] == ids[::-1]
    assert body["data"][0]["title"] == "question 2"
    assert body["data"][0]["message_count"] == 2
    assert httpx.get(f"{hub.api_url}/chat/conversations", headers=bob.auth).json()["data"] == []


def test_the_list_is_paginated(hub, alice, openai_client, models):
    for i in range(3):
        _chat(openai_client, models, f"q{i}")
    first = httpx.get(f"{hub.api_url}/chat/conversations?limit=2", headers=alice.auth).json()
    second = httpx.get(f"{hub.api_url}/chat/conversations?limit=2&offset=2", headers=alice.auth).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    assert len(second["data"]) == 1 and second["has_more"] is False
    bad = httpx.get(f"{hub.api_url}/chat/conversations?limit=0", headers=alice.auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_a_conversation_shows_its_messages_in_order(hub, alice, openai_client, models):
    first = _chat(openai_client, models, "first")
    conversation_id = first.model_extra["conversation_id"]
    second = _chat(openai_client, models, "second", extra_body={"conversation_id": conversation_id})
    body = httpx.get(f"{hub.api_url}/chat/conversations/{conversation_id}", headers=alice.auth).json()
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "first"), ("assistant", first.choices[0].message.content),
        ("user", "second"), ("assistant", second.choices[0].message.content)]


def test_someone_elses_conversation_is_not_found(hub, alice, bob, openai_client, models):
    conversation_id = _chat(openai_client, models).model_extra["conversation_id"]
    url = f"{hub.api_url}/chat/conversations/{conversation_id}"
    for method in ("GET", "DELETE"):
        response = httpx.request(method, url, headers=bob.auth)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"
    assert Conversation.objects.filter(id=conversation_id).exists()


def test_deleting_a_conversation_removes_its_text_and_keeps_usage(hub, alice, openai_client, models):
    completion = _chat(openai_client, models, "secret question")
    conversation_id = completion.model_extra["conversation_id"]
    url = f"{hub.api_url}/chat/conversations/{conversation_id}"
    assert httpx.delete(url, headers=alice.auth).status_code == 204
    assert httpx.get(url, headers=alice.auth).status_code == 404
    assert not Message.objects.filter(conversation_id=conversation_id).exists()
    record = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert record.conversation_id is None and record.prompt_messages == [] and record.completion == ""
    assert record.completion_tokens == 3 and record.prompt_tokens > 0


def test_models_are_listed_in_the_openai_shape(hub, alice, openai_client, models):
    listed = {m.id: m for m in openai_client.models.list()}
    assert {models["tiny"], models["default"]} <= set(listed)
    assert listed[models["default"]].object == "model"
    assert listed[models["default"]].model_extra["context_length"] == 2048
    assert openai_client.models.retrieve(models["tiny"]).id == models["tiny"]
    missing = httpx.get(f"{hub.api_url}/models/none:0b", headers=alice.auth)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
