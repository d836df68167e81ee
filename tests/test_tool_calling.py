"""Function calling through the official openai SDK and LangChain, against the real hub (docs/api.md, Tool calling).

Two kinds of model:
- `tiny:tools`, a real Llama built as a two-state machine (tests/support/tiny_models.py): whatever the prompt,
  it answers with one Hermes `<tool_call>` and ends its turn; its chat template renders tools, so it takes
  the native path. It makes the transport (parsing, deltas, storage, history) testable without luck.
- the default model, SmolLM2 (no tools in its template: the generic prompt). A 135M model does not write
  calls on its own; with a forced tool_choice its arguments are generated under the function's schema by
  the engine's constraint (params["constraint"], workers/constraints.py), so they always parse.
"""
from __future__ import annotations

import json

import httpx
import pytest
from transformers import AutoTokenizer

from tests.support.tiny_models import SCRIPTED_CALL, build_scripted_tool_model

SCRIPTED, PARALLEL = "tiny:tools", "tiny:tools-parallel"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "The time now.",
                                              "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def scripted_model(models, tmp_path_factory):
    from apps.catalog.services import model_register

    directory = build_scripted_tool_model(tmp_path_factory.mktemp("models") / "tiny-tools")
    model_register(model_id=SCRIPTED, path=directory)
    return directory


@pytest.fixture(scope="module")
def parallel_model(models, tmp_path_factory):
    """Like tiny:tools, but its answer is two calls in a row."""
    from apps.catalog.services import model_register

    calls = (SCRIPTED_CALL + "\n" + '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>')
    directory = build_scripted_tool_model(tmp_path_factory.mktemp("models") / "tiny-tools-parallel", call_text=calls)
    model_register(model_id=PARALLEL, path=directory)
    return directory


def _arguments(call) -> dict:
    return json.loads(call.function.arguments)


def test_it_says_in_the_catalog_whether_a_models_tool_calling_is_native(hub, alice, scripted_model, models):
    with httpx.Client(base_url=hub.api_url, headers=alice.auth, timeout=60) as client:
        native = client.get(f"/models/{SCRIPTED}").json()
        generic = client.get(f"/models/{models['default']}").json()
    assert (native["tool_calling"], native["tool_parser"]) == ("native", "hermes")
    assert (generic["tool_calling"], generic["tool_parser"]) == ("generic", "generic")


def test_it_returns_a_models_tool_call_as_message_tool_calls(openai_client, scripted_model):
    response = openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                                     temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and _arguments(call) == {"city": "Paris"}


def test_it_streams_a_tool_call_whose_deltas_reassemble_into_the_same_call(openai_client, scripted_model):
    plain = openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                                  temperature=0).choices[0].message.tool_calls[0]
    with openai_client.chat.completions.stream(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                               temperature=0) as stream:
        deltas = [delta for event in stream if event.type == "chunk"
                  for choice in event.chunk.choices for delta in choice.delta.tool_calls or []]
        final = stream.get_final_completion()
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert all(delta.id is None and delta.function.name is None for delta in deltas[1:])
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert (call.function.name, _arguments(call)) == (plain.function.name, _arguments(plain))
    assert not choice.message.content


def test_it_sends_a_tool_call_event_over_the_websocket(hub, alice, scripted_model):
    from websockets.sync.client import connect

    body = {"model": SCRIPTED, "messages": ASK, "tools": [WEATHER_TOOL], "temperature": 0}
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=alice.auth, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "authenticated"
        ws.send(json.dumps({"type": "chat.completion", "request": body}))
        assert json.loads(ws.recv(timeout=30))["type"] == "accepted"
        events = [json.loads(ws.recv(timeout=60))]
        while events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(ws.recv(timeout=60)))
    call, done = events
    assert call["type"] == "tool_call" and (call["index"], call["tool_index"]) == (0, 0)
    assert call["id"].startswith("call_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert done["finish_reason"] == "tool_calls"


def test_it_renders_a_native_template_with_the_tools(openai_client, scripted_model):
    tokenizer = AutoTokenizer.from_pretrained(scripted_model)
    expected = tokenizer.apply_chat_template(ASK, tools=[WEATHER_TOOL, TIME_TOOL], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    without_tools = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, return_dict=True)["input_ids"]
    response = openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL],
                                                     temperature=0)
    assert response.usage.prompt_tokens == len(expected) > len(without_tools)


def test_it_returns_parallel_calls_unless_parallel_tool_calls_is_false(openai_client, parallel_model):
    options = dict(model=PARALLEL, messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], temperature=0)
    both = openai_client.chat.completions.create(**options).choices[0].message.tool_calls
    assert [(c.function.name, _arguments(c)) for c in both] == [("get_weather", {"city": "Paris"}),
                                                                ("get_time", {"zone": "CET"})]
    assert len({c.id for c in both}) == 2
    with openai_client.chat.completions.stream(**options) as stream:
        streamed = stream.get_final_completion().choices[0].message.tool_calls
    assert [(c.function.name, _arguments(c)) for c in streamed] == [(c.function.name, _arguments(c)) for c in both]
    one = openai_client.chat.completions.create(**options, parallel_tool_calls=False).choices[0].message.tool_calls
    assert [(c.function.name, _arguments(c)) for c in one] == [("get_weather", {"city": "Paris"})]


def test_it_parses_nothing_when_tool_choice_is_none(openai_client, scripted_model):
    response = openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                                     tool_choice="none", temperature=0)
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and not choice.message.tool_calls
    assert "<tool_call>" in choice.message.content  # the model's text, as written


def test_it_stores_the_calls_and_continues_the_conversation_with_a_tool_result(openai_client, alice, hub,
                                                                               scripted_model):
    first = openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                                  temperature=0)
    call = first.choices[0].message.tool_calls[0]
    conversation_id = first.model_extra["conversation_id"]
    # Only the tool's result is sent: the call it answers is in the stored conversation.
    second = openai_client.chat.completions.create(
        model=SCRIPTED, tools=[WEATHER_TOOL], temperature=0, max_tokens=4,
        messages=[{"role": "tool", "tool_call_id": call.id, "content": "22 °C and sunny"}],
        extra_body={"conversation_id": conversation_id})
    assert second.choices[0].finish_reason == "tool_calls"
    with httpx.Client(base_url=hub.api_url, headers=alice.auth, timeout=60) as client:
        messages = client.get(f"/chat/conversations/{conversation_id}").json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["id"] == call.id
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert messages[2]["tool_call_id"] == call.id and messages[2]["content"] == "22 °C and sunny"


def test_it_accepts_a_history_of_calls_and_results_on_the_default_model(openai_client, models):
    history = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 °C and sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
    ]
    response = openai_client.chat.completions.create(model=models["default"], messages=history,
                                                     tools=[WEATHER_TOOL, TIME_TOOL], tool_choice="none",
                                                     temperature=0, max_tokens=24)
    choice = response.choices[0]
    assert choice.message.content and not choice.message.tool_calls
    assert response.usage.prompt_tokens > 100  # the tools and both results are in the prompt


def _error(excinfo) -> dict:
    return excinfo.value.response.json()["error"]


def test_it_refuses_a_tool_message_that_answers_no_call(openai_client, scripted_model):
    import openai

    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=SCRIPTED, tools=[WEATHER_TOOL], messages=ASK + [
            {"role": "tool", "tool_call_id": "call_nobody_made", "content": "22 °C"}])
    assert _error(excinfo)["param"] == "messages.1.tool_call_id"
    assert "call_nobody_made" in _error(excinfo)["message"]


def test_it_refuses_a_named_tool_choice_that_is_not_among_the_tools(openai_client, scripted_model):
    import openai

    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[WEATHER_TOOL],
                                              tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert _error(excinfo)["param"] == "tool_choice"


def test_it_refuses_a_function_name_openai_would_refuse(openai_client, scripted_model):
    import openai

    bad = {"type": "function", "function": {"name": "get weather!", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as excinfo:
        openai_client.chat.completions.create(model=SCRIPTED, messages=ASK, tools=[bad])
    assert _error(excinfo)["param"].startswith("tools.0.function.name")


def test_it_never_answers_a_tool_request_from_the_response_cache(hub, alice, scripted_model):
    body = {"model": SCRIPTED, "messages": ASK, "tools": [WEATHER_TOOL], "temperature": 0, "cache": True}
    with httpx.Client(base_url=hub.api_url, headers=alice.auth, timeout=120) as client:
        answers = [client.post("/chat/completions", json=body) for _ in range(2)]
    assert all(a.status_code == 200 and "X-AIHub-Cache" not in a.headers for a in answers)
    ids = [a.json()["choices"][0]["message"]["tool_calls"][0]["id"] for a in answers]
    assert ids[0] != ids[1]  # each answer's calls are its own


def test_the_default_model_calls_the_function_a_named_tool_choice_forces(openai_client, models):
    response = openai_client.chat.completions.create(
        model=models["default"], messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], temperature=0, max_tokens=40,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(_arguments(call)["city"], str)


def test_the_default_model_calls_some_function_when_tool_choice_is_required(openai_client, models):
    response = openai_client.chat.completions.create(
        model=models["default"], messages=ASK, tools=[WEATHER_TOOL, TIME_TOOL], temperature=0, max_tokens=40,
        tool_choice="required", parallel_tool_calls=False)
    [call] = response.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time") and isinstance(_arguments(call), dict)


def test_the_default_models_forced_call_streams_as_it_answers_whole(openai_client, models):
    options = dict(model=models["default"], messages=ASK, tools=[WEATHER_TOOL], temperature=0, max_tokens=40,
                   tool_choice={"type": "function", "function": {"name": "get_weather"}})
    plain = openai_client.chat.completions.create(**options).choices[0].message.tool_calls[0]
    with openai_client.chat.completions.stream(**options) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.name, _arguments(call)) == (plain.function.name, _arguments(plain))


def test_a_langchain_agent_calls_a_tool_and_answers_with_its_result(hub, alice, models):
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The current weather of a city."""
        return f"22 degrees and sunny in {city}"

    llm = ChatOpenAI(base_url=hub.api_url, api_key=alice.raw_key, model=models["default"], temperature=0,
                     max_tokens=60, max_retries=0, timeout=120)
    question = HumanMessage("What is the weather in Paris?")
    asked = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert len(asked.tool_calls) == 1, (asked.invalid_tool_calls, asked.response_metadata)
    [call] = asked.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    result = get_weather.invoke(call)  # a ToolMessage answering the call by its id
    answer = llm.bind_tools([get_weather], tool_choice="none").invoke([question, asked, result])
    assert isinstance(answer.content, str) and answer.content.strip() and not answer.tool_calls
