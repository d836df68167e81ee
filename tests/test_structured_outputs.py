"""Structured outputs (response_format) through the official OpenAI SDK: the engine's constrained decoding.

Schemas here bound every string (maxLength, enum), number and array, so even the random-weight tiny model
ends its answer by the grammar well inside max_tokens: every answer must finish with `stop` and validate.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from apps.chat.models import GenerationRequest

ASK = [{"role": "user", "content": "Describe a person as JSON."}]

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "tags", "address"],
    "additionalProperties": False,
}

# The shape a forced tool call takes (the tools task passes it through the same constraint).
TOOL_CALL = {
    "anyOf": [
        {"type": "object", "properties": {"name": {"const": "get_weather"},
                                          "arguments": {"type": "object",
                                                        "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                                                        "required": ["city"], "additionalProperties": False}},
         "required": ["name", "arguments"], "additionalProperties": False},
        {"type": "object", "properties": {"name": {"const": "get_time"},
                                          "arguments": {"type": "object", "properties": {},
                                                        "additionalProperties": False}},
         "required": ["name", "arguments"], "additionalProperties": False},
    ]
}


def json_schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def assert_valid(choice, schema: dict) -> dict:
    assert choice.finish_reason == "stop", choice
    value = json.loads(choice.message.content)
    jsonschema.validate(value, schema)
    return value


def test_it_answers_a_json_schema_with_json_that_validates_on_the_tiny_model(openai_client, models):
    for seed in (1, 2, 3):
        completion = openai_client.chat.completions.create(
            model=models["tiny"], messages=ASK, max_tokens=300, temperature=1, seed=seed,
            response_format=json_schema_format(PERSON))
        assert_valid(completion.choices[0], PERSON)
    greedy = openai_client.chat.completions.create(model=models["tiny"], messages=ASK, max_tokens=300,
                                                   temperature=0, response_format=json_schema_format(PERSON))
    assert_valid(greedy.choices[0], PERSON)


def test_it_forces_one_of_several_tool_call_shapes(openai_client, models):
    for seed in (1, 2, 3, 4):
        completion = openai_client.chat.completions.create(
            model=models["tiny"], messages=ASK, max_tokens=100, temperature=1, seed=seed,
            response_format=json_schema_format(TOOL_CALL, "call"))
        call = assert_valid(completion.choices[0], TOOL_CALL)
        assert call["name"] in ("get_weather", "get_time")


def test_a_streamed_constrained_answer_is_valid_json_ending_with_stop(openai_client, models):
    request = {"model": models["tiny"], "messages": ASK, "max_tokens": 300, "temperature": 0,
               "response_format": json_schema_format(PERSON)}
    whole = openai_client.chat.completions.create(**request).choices[0].message.content
    chunks = list(openai_client.chat.completions.create(**request, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    jsonschema.validate(json.loads(text), PERSON)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_an_answer_cut_by_max_tokens_finishes_with_length(openai_client, models):
    completion = openai_client.chat.completions.create(model=models["tiny"], messages=ASK, max_tokens=3,
                                                       temperature=0, response_format=json_schema_format(PERSON))
    choice = completion.choices[0]
    assert choice.finish_reason == "length"
    assert choice.message.content.startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice.message.content)
    assert completion.usage.completion_tokens == 3


def test_constrained_and_plain_requests_share_the_batch_and_each_keeps_its_own_schema(openai_client, models):
    small = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1,
                                                                                "maximum": 9}},
             "required": ["ok", "n"], "additionalProperties": False}
    requests = [("person", PERSON), ("plain", None), ("small", small), ("call", TOOL_CALL), ("plain", None),
                ("person", PERSON), ("small", small), ("plain", None)]

    def ask(index_and_request):
        index, (name, schema) = index_and_request
        extra = {"response_format": json_schema_format(schema, name)} if schema else {}
        return openai_client.chat.completions.create(model=models["tiny"], messages=ASK, max_tokens=200,
                                                     temperature=1, seed=index, **extra)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(ask, enumerate(requests)))
    for (name, schema), completion in zip(requests, answers):
        if schema is None:
            # The tiny model never ends by itself: a plain answer runs to max_tokens.
            assert completion.choices[0].finish_reason == "length"
            assert completion.usage.completion_tokens == 200
        else:
            assert_valid(completion.choices[0], schema)


def test_json_object_answers_one_json_object_on_the_default_model(openai_client, models):
    messages = [{"role": "user", "content": "Give a JSON object with the name and the age of a person."}]
    for stream in (False, True):
        request = {"model": models["default"], "messages": messages, "max_tokens": 200, "temperature": 0,
                   "response_format": {"type": "json_object"}}
        if stream:
            chunks = list(openai_client.chat.completions.create(**request, stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            choice = openai_client.chat.completions.create(**request).choices[0]
            text, finish = choice.message.content, [choice.finish_reason]
        assert finish == ["stop"]
        assert isinstance(json.loads(text), dict)


def test_json_schema_on_the_default_model_gives_a_meaningful_valid_answer(openai_client, models):
    schema = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 40},
                                               "country": {"type": "string", "maxLength": 40}},
              "required": ["capital", "country"], "additionalProperties": False}
    messages = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]
    completion = openai_client.chat.completions.create(model=models["default"], messages=messages, max_tokens=100,
                                                       temperature=0, response_format=json_schema_format(schema))
    answer = assert_valid(completion.choices[0], schema)
    assert "paris" in answer["capital"].lower()


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)


def test_the_sdk_parse_helper_returns_a_parsed_pydantic_object(openai_client, models):
    completion = openai_client.chat.completions.parse(
        model=models["default"], max_tokens=150, temperature=0, response_format=City,
        messages=[{"role": "user", "content": "Describe Paris as JSON: name, country, population in millions."}])
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, City)
    assert message.parsed.name


@pytest.mark.parametrize("response_format, fragment", [
    (json_schema_format({"type": "strin"}), "Invalid type"),
    (json_schema_format({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}), "uniqueItems"),
    (json_schema_format({"$ref": "#/$defs/missing"}), "missing"),
    ({"type": "json_schema", "json_schema": {"name": "has spaces", "schema": {"type": "object"}}}, "name"),
    ({"type": "xml"}, "json_schema"),
])
def test_a_bad_or_unsupported_schema_is_a_400_naming_response_format_and_stores_nothing(
        hub, alice, models, response_format, fragment):
    response = httpx.post(f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=60, json={
        "model": models["tiny"], "messages": ASK, "response_format": response_format})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "response_format"
    assert fragment in error["message"]
    assert not GenerationRequest.objects.filter(user=alice.user).exists()


def test_the_sdk_raises_bad_request_for_an_invalid_schema(openai_client, models):
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.chat.completions.create(model=models["tiny"], messages=ASK,
                                              response_format=json_schema_format({"type": 5}))
    assert raised.value.body["param"] == "response_format"


def test_text_response_format_is_plain_generation(openai_client, models):
    request = {"model": models["tiny"], "messages": ASK, "max_tokens": 10, "temperature": 0}
    plain = openai_client.chat.completions.create(**request).choices[0].message.content
    text = openai_client.chat.completions.create(**request, response_format={"type": "text"})
    assert text.choices[0].message.content == plain


def test_the_response_cache_never_answers_a_constrained_request_with_plain_text(openai_client, models):
    request = {"model": models["tiny"], "messages": ASK, "max_tokens": 300, "temperature": 0,
               "extra_body": {"cache": True}}
    plain = openai_client.chat.completions.create(**request)
    constrained = openai_client.chat.completions.create(**request, response_format=json_schema_format(PERSON))
    assert constrained.choices[0].message.content != plain.choices[0].message.content
    assert_valid(constrained.choices[0], PERSON)
    again = openai_client.chat.completions.create(**request, response_format=json_schema_format(PERSON))
    assert again.choices[0].message.content == constrained.choices[0].message.content
