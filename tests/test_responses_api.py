"""OpenAI's Responses API through the official SDK: the same queue, worker and stored conversations as chat."""
import json

import httpx
import pytest
from openai import NotFoundError, OpenAI

from apps.chat.models import GenerationRequest


def _client(hub, account) -> OpenAI:
    return OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=120)


def test_it_answers_a_string_input_with_a_response_object(openai_client, models):
    response = openai_client.responses.create(model=models["tiny"], input="Hello there", max_output_tokens=8,
                                              temperature=0)
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "incomplete"  # the tiny model never ends by itself: max_output_tokens cut it
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.output_text
    assert response.usage.output_tokens == 8
    assert response.usage.total_tokens == response.usage.input_tokens + 8


def test_the_real_model_completes_and_the_response_can_be_retrieved(openai_client, models):
    response = openai_client.responses.create(model=models["default"], input="What is the capital of France?",
                                              instructions="Answer in one short sentence.", max_output_tokens=40,
                                              temperature=0)
    assert response.status == "completed"
    assert "Paris" in response.output_text
    assert response.instructions == "Answer in one short sentence."
    again = openai_client.responses.retrieve(response.id)
    assert again.output_text == response.output_text
    assert again.status == "completed"


def test_streamed_events_come_in_openai_order_and_add_up_to_the_answer(openai_client, models):
    request = {"model": models["tiny"], "input": "Tell me a story", "max_output_tokens": 12, "temperature": 0}
    whole = openai_client.responses.create(**request).output_text
    events = list(openai_client.responses.create(**request, stream=True))
    types = [event.type for event in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == whole
    assert events[-1].response.output_text == whole


def test_previous_response_id_continues_the_conversation_without_the_old_instructions(hub, openai_client, alice,
                                                                                     models):
    first = openai_client.responses.create(model=models["tiny"], input="My name is Ada.", max_output_tokens=4,
                                           instructions="Be brief.")
    second = openai_client.responses.create(model=models["tiny"], input="What is my name?", max_output_tokens=4,
                                            previous_response_id=first.id)
    assert second.previous_response_id == first.id
    rows = {row.id.hex: row for row in GenerationRequest.objects.filter(user=alice.user)}
    prompt = rows[second.id.removeprefix("resp_")].prompt_messages
    assert [m["content"] for m in prompt[:1]] == ["My name is Ada."]  # the old instructions are not carried
    assert prompt[-1] == {"role": "user", "content": "What is my name?"}
    assert prompt[1]["role"] == "assistant" and prompt[1]["content"] == first.output_text
    conversation = httpx.get(f"{hub.api_url}/chat/conversations/{second.model_extra['conversation_id']}",
                             headers=alice.auth).json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user", "assistant"]


def test_continuing_an_earlier_response_forks_the_conversation(openai_client, alice, models):
    first = openai_client.responses.create(model=models["tiny"], input="Pick a colour.", max_output_tokens=3)
    left = openai_client.responses.create(model=models["tiny"], input="Why?", max_output_tokens=3,
                                          previous_response_id=first.id)
    right = openai_client.responses.create(model=models["tiny"], input="Another one.", max_output_tokens=3,
                                           previous_response_id=first.id)
    assert left.model_extra["conversation_id"] == first.model_extra["conversation_id"]
    assert right.model_extra["conversation_id"] != first.model_extra["conversation_id"]
    row = GenerationRequest.objects.get(id=right.id.removeprefix("resp_"))
    assert [m["content"] for m in row.prompt_messages] == ["Pick a colour.", first.output_text, "Another one."]


def test_another_users_response_is_not_found_for_retrieve_or_continue(hub, openai_client, bob, models):
    mine = openai_client.responses.create(model=models["tiny"], input="Secret plans", max_output_tokens=2)
    theirs = _client(hub, bob)
    with pytest.raises(NotFoundError):
        theirs.responses.retrieve(mine.id)
    with pytest.raises(NotFoundError) as refused:
        theirs.responses.create(model=models["tiny"], input="Go on", previous_response_id=mine.id)
    assert refused.value.body["param"] == "previous_response_id"


def test_a_deleted_response_is_gone(openai_client, models):
    response = openai_client.responses.create(model=models["tiny"], input="Forget this", max_output_tokens=2)
    openai_client.responses.delete(response.id)
    with pytest.raises(NotFoundError):
        openai_client.responses.retrieve(response.id)


def test_bad_input_items_are_refused_in_the_error_shape(hub, alice, models):
    answer = httpx.post(f"{hub.api_url}/responses", headers=alice.auth, json={
        "model": models["tiny"], "input": [{"type": "reasoning", "summary": []}]})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "input"
    assert "reasoning" in answer.json()["error"]["message"]


WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}
FORCED = {"type": "function", "name": "get_weather"}


def test_a_forced_function_tool_comes_back_as_a_function_call_item(openai_client, models):
    response = openai_client.responses.create(model=models["default"], input="What is the weather in Paris?",
                                              tools=[WEATHER], tool_choice=FORCED, temperature=0,
                                              max_output_tokens=40)
    assert response.status == "completed"
    [call] = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    assert call.call_id and call.status == "completed"
    assert response.tools[0].name == "get_weather"
    assert response.tool_choice.name == "get_weather"


def test_a_function_calls_output_continues_the_response_to_an_answer(openai_client, models):
    first = openai_client.responses.create(model=models["default"], input="What is the weather in Paris?",
                                           tools=[WEATHER], tool_choice=FORCED, temperature=0, max_output_tokens=40)
    [call] = [item for item in first.output if item.type == "function_call"]
    second = openai_client.responses.create(
        model=models["default"], previous_response_id=first.id, tools=[WEATHER], tool_choice="none",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees."}],
        temperature=0, max_output_tokens=30)
    assert second.status in ("completed", "incomplete")
    assert second.output[0].type == "message" and second.output_text
    row = GenerationRequest.objects.get(id=second.id.removeprefix("resp_"))
    assert row.prompt_messages[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 24 degrees."}


def test_a_streamed_function_call_arrives_as_argument_deltas_and_a_done_item(openai_client, models):
    events = list(openai_client.responses.create(model=models["default"], input="What is the weather in Paris?",
                                                 tools=[WEATHER], tool_choice=FORCED, temperature=0,
                                                 max_output_tokens=40, stream=True))
    types = [event.type for event in events]
    assert "response.function_call_arguments.delta" in types
    added = next(e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call")
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments and json.loads(done.arguments)["city"]
    assert added.item.name == "get_weather"
    [final] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert final.arguments == done.arguments and final.call_id == added.item.call_id
