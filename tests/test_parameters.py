"""Parameters are honoured or refused: what an endpoint does not declare is a 400 naming it, and the schema says so."""
import io

import httpx
import openai
import pytest

from tests.conftest import make_account

HI = [{"role": "user", "content": "hi"}]


def _refusal(exc_info) -> dict:
    assert exc_info.value.status_code == 400
    error = exc_info.value.body
    assert error["code"] == "unsupported_parameter"
    return error


def test_it_refuses_an_openai_parameter_it_does_not_implement_by_name(openai_client, models):
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.chat.completions.create(model=models["tiny"], messages=HI, max_tokens=2,
                                              service_tier="flex")
    error = _refusal(exc_info)
    assert error["param"] == "service_tier" and "not supported" in error["message"]


def test_it_refuses_an_unknown_parameter_by_name_instead_of_ignoring_it(openai_client, models):
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.chat.completions.create(model=models["tiny"], messages=HI, extra_body={"max_token": 2})
    error = _refusal(exc_info)
    assert error["param"] == "max_token" and "unknown parameter" in error["message"]


def test_it_refuses_an_unknown_key_inside_a_message_by_its_path(openai_client, models):
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.chat.completions.create(model=models["tiny"], max_tokens=2,
                                              messages=[{"role": "user", "content": "hi", "mood": "glad"}])
    assert _refusal(exc_info)["param"] == "messages.0.mood"


def test_an_answer_sent_back_as_history_is_accepted_with_its_null_fields(openai_client, models):
    first = openai_client.chat.completions.create(model=models["tiny"], messages=HI, max_tokens=2)
    assert first.choices[0].message.refusal is None
    history = [*HI, first.choices[0].message, {"role": "user", "content": "and?"}]
    second = openai_client.chat.completions.create(model=models["tiny"], max_tokens=2, messages=history)
    assert second.choices[0].message.role == "assistant"


def test_documented_extensions_are_accepted(openai_client, models):
    answer = openai_client.chat.completions.create(model=models["tiny"], messages=HI, max_tokens=2,
                                                   extra_body={"cache": False, "keep_alive": 60, "ignore_eos": True})
    assert answer.usage.completion_tokens == 2


def test_another_endpoint_refuses_an_unknown_parameter_through_the_sdk(hub, alice, openai_client):
    with pytest.raises(openai.BadRequestError) as exc_info:
        openai_client.files.create(file=("train.jsonl", io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune",
                                   extra_body={"expires_after_days": "7"})
    assert _refusal(exc_info)["param"] == "expires_after_days"
    assert httpx.get(f"{hub.api_url}/files", headers=alice.auth).json()["data"] == []  # nothing stored


def test_load_and_unload_refuse_a_misspelt_key_by_name(hub):
    staff = make_account("ops", staff=True, scopes=["inference", "admin"])
    for action in ("load", "unload"):
        response = httpx.post(f"{hub.api_url}/models/{action}", headers=staff.auth, json={"modelid": "tiny:chat"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "modelid"
        assert response.json()["error"]["code"] == "unsupported_parameter"


def test_query_parameters_a_list_does_not_declare_are_refused(hub, alice):
    response = httpx.get(f"{hub.api_url}/chat/conversations?limit=2&order=asc", headers=alice.auth)
    assert response.status_code == 400
    assert response.json()["error"] == {"message": response.json()["error"]["message"],
                                        "type": "invalid_request_error", "param": "order",
                                        "code": "unsupported_parameter"}


def test_the_schema_describes_load_unload_and_chat_from_their_serializers(hub):
    schema = httpx.get(f"{hub.base_url}/api/schema?format=json").json()
    components = schema["components"]["schemas"]

    def body_of(path):
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return components[ref.rsplit("/", 1)[1]]

    load, unload, chat = (body_of(f"/api/v1/{path}") for path in ("models/load", "models/unload", "chat/completions"))
    assert set(load["properties"]) == {"model_id", "keep_alive", "force_reload", "worker"}
    assert load["required"] == ["model_id"] and unload["required"] == ["model_id"]
    assert {"messages", "model", "stream", "keep_alive", "cache", "conversation_id"} <= set(chat["properties"])
    assert chat["additionalProperties"] is False  # the refusal, stated in the schema
    answer = schema["paths"]["/api/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(answer) == {"application/json", "text/event-stream"}
    assert {"choices", "usage", "conversation_id"} <= set(components["ChatCompletion"]["properties"])
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and not path.startswith("/health"):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/Error"}, (method, path, status)
