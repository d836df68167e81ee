"""Legacy text completions (POST /completions) through the official OpenAI SDK: raw prompts, no chat template."""
import json

import httpx
import openai
import pytest

from apps.chat.models import Conversation, GenerationRequest
from tests.test_limits import limited

PROMPT = "Once upon a time there was a"


def _complete(client, model, **request):
    return client.completions.create(model=model, **{"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                                     **request})


def test_it_continues_a_raw_prompt_without_the_chat_template(openai_client, alice, models):
    completion = _complete(openai_client, models["tiny"])
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == models["tiny"]
    choice = completion.choices[0]
    assert choice.index == 0 and choice.text and choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 8
    chat = openai_client.chat.completions.create(model=models["tiny"], max_tokens=1,
                                                 messages=[{"role": "user", "content": PROMPT}])
    # The chat template wraps the same text in role markers; the raw prompt is the text alone.
    assert completion.usage.prompt_tokens < chat.usage.prompt_tokens
    generation = GenerationRequest.objects.get(user=alice.user, params__prompt=PROMPT)
    assert generation.conversation is None and generation.completion == choice.text
    assert Conversation.objects.filter(user=alice.user).count() == 1  # the chat request's only


def test_max_tokens_defaults_to_16_as_openai(openai_client, models):
    completion = openai_client.completions.create(model=models["tiny"], prompt=PROMPT, temperature=0)
    assert completion.usage.completion_tokens == 16


def test_streaming_gives_the_same_greedy_text_and_usage_at_the_end(openai_client, models):
    whole = _complete(openai_client, models["tiny"], max_tokens=20).choices[0].text
    chunks = list(_complete(openai_client, models["tiny"], max_tokens=20, stream=True,
                            stream_options={"include_usage": True}))
    assert all(chunk.object == "text_completion" for chunk in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_the_raw_stream_is_server_sent_events_ending_with_done(hub, alice, models):
    with httpx.stream("POST", f"{hub.api_url}/completions", headers=alice.auth, timeout=60, json={
            "model": models["tiny"], "prompt": PROMPT, "max_tokens": 3, "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-1] == "length"
    assert all(chunk["choices"] and "usage" not in chunk for chunk in chunks)  # no usage chunk unless asked


def test_echo_puts_the_prompt_before_the_completion(openai_client, models):
    plain = _complete(openai_client, models["tiny"]).choices[0].text
    echoed = _complete(openai_client, models["tiny"], echo=True).choices[0].text
    assert echoed == PROMPT + plain
    streamed = list(_complete(openai_client, models["tiny"], echo=True, stream=True))
    assert streamed[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in streamed) == PROMPT + plain


def test_a_stop_string_ends_the_text_before_it(openai_client, models):
    full = _complete(openai_client, models["tiny"], max_tokens=30).choices[0].text
    stop = full[10:14]
    stopped = _complete(openai_client, models["tiny"], max_tokens=30, stop=[stop]).choices[0]
    assert stopped.text == full[:full.index(stop)] and stopped.finish_reason == "stop"


def test_a_list_of_prompts_gives_one_choice_per_prompt_in_order(openai_client, models):
    prompts = [PROMPT, "The weather today is"]
    singles = [_complete(openai_client, models["tiny"], prompt=prompt).choices[0].text for prompt in prompts]
    batch = _complete(openai_client, models["tiny"], prompt=prompts)
    assert [c.index for c in batch.choices] == [0, 1]
    assert [c.text for c in batch.choices] == singles
    assert batch.usage.completion_tokens == 16
    streamed = list(_complete(openai_client, models["tiny"], prompt=prompts, stream=True))
    for index, single in enumerate(singles):
        assert "".join(c.choices[0].text for c in streamed if c.choices[0].index == index) == single


def test_token_id_prompts_are_continued_and_ids_outside_the_vocabulary_refused(openai_client, models):
    completion = _complete(openai_client, models["tiny"], prompt=[5, 6, 7, 8])
    assert completion.usage.prompt_tokens == 4 and completion.usage.completion_tokens == 8
    with pytest.raises(openai.BadRequestError) as refused:
        _complete(openai_client, models["tiny"], prompt=[5, 10**7])
    assert refused.value.body["code"] == "invalid_prompt" and refused.value.body["param"] == "prompt"


def test_the_default_model_continues_a_sentence_sensibly(openai_client, models):
    completion = openai_client.completions.create(model=models["default"], prompt="The capital of France is",
                                                  temperature=0)
    assert "Paris" in completion.choices[0].text


def test_logprobs_come_in_the_legacy_shape_streamed_or_not(openai_client, models):
    request = {"model": models["default"], "prompt": "The capital of France is", "max_tokens": 4,
               "temperature": 0, "logprobs": 2}
    whole = openai_client.completions.create(**request).choices[0]
    logprobs = whole.logprobs
    assert "".join(logprobs.tokens) == whole.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == 4
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    # Greedy: the chosen token is the most likely of its alternatives.
    assert all(max(top.values()) == chosen for top, chosen in zip(logprobs.top_logprobs, logprobs.token_logprobs))
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    streamed = [c.choices[0].logprobs for c in openai_client.completions.create(**request, stream=True)
                if c.choices and c.choices[0].text]
    assert [t for chunk in streamed for t in chunk.tokens] == logprobs.tokens
    assert [o for chunk in streamed for o in chunk.text_offset] == logprobs.text_offset


@pytest.mark.parametrize("param, value", [("suffix", "the end"), ("best_of", 2), ("n", 2)])
def test_unimplemented_parameters_are_refused_by_name(openai_client, alice, models, param, value):
    with pytest.raises(openai.BadRequestError) as refused:
        _complete(openai_client, models["tiny"], **{param: value})
    assert refused.value.body["code"] == "unsupported_parameter" and refused.value.body["param"] == param
    assert not GenerationRequest.objects.filter(user=alice.user).exists()


def test_the_keys_limits_apply_to_each_prompt(hub, models):
    account = limited(requests_per_minute=2)

    def complete(prompt):
        return httpx.post(f"{hub.api_url}/completions", headers=account.auth, timeout=60,
                          json={"model": models["tiny"], "prompt": prompt, "max_tokens": 2})

    refused = complete(["a", "b", "c"])  # three requests' worth, more than the key's minute allows
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert not GenerationRequest.objects.filter(user=account.user).exists()
    assert complete(["a", "b"]).status_code == 200
    assert complete("c").status_code == 429
    assert GenerationRequest.objects.filter(user=account.user).count() == 2

