"""Chat completions through the official OpenAI SDK, end to end through the queue and a real worker."""
import time

import httpx

from apps.chat.models import Conversation, GenerationRequest, Message

HELLO = [{"role": "user", "content": "Hello there, tell me a story."}]


def test_it_answers_with_the_openai_completion_shape(openai_client, alice, models):
    completion = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=12,
                                                       temperature=0)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == models["tiny"]
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    # The tiny model never emits its end token, so a greedy answer runs to max_tokens.
    assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 12


def test_streaming_gives_the_same_greedy_text_as_non_streaming(openai_client, models):
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 40, "temperature": 0}
    whole = openai_client.chat.completions.create(**request).choices[0].message.content
    chunks = list(openai_client.chat.completions.create(**request, stream=True,
                                                        stream_options={"include_usage": True}))
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finishing = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishing == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40


def test_stream_without_include_usage_has_no_usage_chunk(openai_client, models):
    chunks = list(openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=5,
                                                        temperature=0, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


def test_raw_sse_ends_with_done(hub, alice, models):
    with httpx.stream("POST", f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=60, json={
            "model": models["tiny"], "messages": HELLO, "max_tokens": 4, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


def test_a_stop_string_ends_the_answer_before_it(openai_client, models):
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 30, "temperature": 0}
    full = openai_client.chat.completions.create(**request).choices[0].message.content
    stop = full[10:14]
    expected = full[:full.index(stop)]
    stopped = openai_client.chat.completions.create(**request, stop=[stop])
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    streamed = list(openai_client.chat.completions.create(**request, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


def test_the_same_seed_gives_the_same_sampled_text(openai_client, models):
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 20, "temperature": 1.0, "seed": 7}
    first = openai_client.chat.completions.create(**request).choices[0].message.content
    second = openai_client.chat.completions.create(**request).choices[0].message.content
    assert first == second


def test_text_content_parts_and_max_completion_tokens_are_accepted(openai_client, models):
    completion = openai_client.chat.completions.create(
        model=models["tiny"], max_completion_tokens=3, temperature=0,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "you"}]}])
    assert completion.usage.completion_tokens == 3


def test_every_completion_is_stored_with_usage_and_timings(openai_client, alice, models):
    completion = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=6)
    generation = GenerationRequest.objects.get(user=alice.user)
    assert generation.state == GenerationRequest.State.SUCCEEDED
    assert generation.completion == completion.choices[0].message.content
    assert generation.completion_tokens == 6
    assert generation.worker.startswith("inference@")
    assert 0 <= generation.queue_wait_ms <= generation.time_to_first_token_ms <= generation.total_ms
    conversation = Conversation.objects.get(user=alice.user)
    assert [m.role for m in conversation.messages.all()] == ["user", "assistant"]
    assert conversation.messages.last().content == completion.choices[0].message.content
    assert str(conversation.id) == completion.model_extra["conversation_id"]


def test_a_conversation_continues_with_its_history(openai_client, alice, models):
    first = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=5)
    conversation_id = first.model_extra["conversation_id"]
    second = openai_client.chat.completions.create(
        model=models["tiny"], max_tokens=5, messages=[{"role": "user", "content": "And then?"}],
        extra_body={"conversation_id": conversation_id})
    assert second.model_extra["conversation_id"] == conversation_id
    # The model saw the first exchange too.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    generation = GenerationRequest.objects.filter(user=alice.user).order_by("created_at").last()
    assert [m["role"] for m in generation.prompt_messages] == ["user", "assistant", "user"]
    assert Message.objects.filter(conversation_id=conversation_id).count() == 4


def test_the_worker_keeps_the_model_loaded_between_requests(openai_client, hub, models):
    openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=2)
    before = len(hub.processes.log("inference"))
    for _ in range(3):
        openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=2)
    assert "loaded tiny:chat on" not in hub.processes.log("inference")[before:]


def test_closing_an_sse_stream_cancels_the_generation(hub, alice, models):
    started = None
    with httpx.stream("POST", f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=60, json={
            "model": models["tiny"], "messages": HELLO, "max_tokens": 3000, "stream": True}) as response:
        request_id = response.headers["x-aihub-request-id"]
        for index, _ in enumerate(response.iter_lines()):
            if index > 10:
                started = time.monotonic()
                break
    generation = _wait_finished(request_id)
    assert generation.state == GenerationRequest.State.CANCELLED
    assert generation.finished_at is not None
    assert generation.completion_tokens < 3000
    assert time.monotonic() - started < 1.5
    # Nothing half-done lands in the conversation.
    assert not Message.objects.filter(generation=generation).exists()


def _wait_finished(request_id, timeout=10.0) -> GenerationRequest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        generation = GenerationRequest.objects.get(id=request_id)
        if generation.is_finished:
            return generation
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} still {generation.state} after {timeout}s")


def test_the_default_model_knows_the_capital_of_france(openai_client, models):
    completion = openai_client.chat.completions.create(
        model=models["default"], temperature=0, max_tokens=32,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


def test_an_omitted_model_means_the_default_model(hub, alice):
    response = httpx.post(f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=120, json={
        "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "smollm2:135m"
