"""The rest of chat's sampling surface through the official OpenAI SDK: logprobs, n, penalties, logit_bias,
seed, system_fingerprint, metadata, user and store, honoured end to end or refused by name."""
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from apps.catalog.models import ModelEntry
from apps.chat.models import GenerationRequest
from tests.conftest import make_account
from tests.support.fine_tuning import wait_for

HELLO = [{"role": "user", "content": "Hello there, tell me a story."}]
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def _tokenizer(model_id: str):
    return AutoTokenizer.from_pretrained(ModelEntry.objects.get(id=model_id).path)


def _single_token(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens"
    return ids[0]


def test_logprobs_have_openais_shape_and_a_greedy_token_is_its_most_likely(openai_client, models):
    completion = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=8,
                                                       temperature=0, logprobs=True, top_logprobs=3)
    content = completion.choices[0].logprobs.content
    assert len(content) == 8  # the tiny model never ends its turn: one entry per generated token
    for entry in content:
        assert entry.logprob <= 0 and entry.bytes and entry.token
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token
        assert entry.logprob == pytest.approx(max(top.logprob for top in entry.top_logprobs))
        assert [top.logprob for top in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                     reverse=True)
    without = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=8,
                                                    temperature=0, logprobs=True)
    assert all(entry.top_logprobs == [] for entry in without.choices[0].logprobs.content)
    plain = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None


def test_the_bytes_of_the_logprobs_spell_the_answer_of_the_default_model(openai_client, models):
    completion = openai_client.chat.completions.create(model=models["default"], messages=FRANCE, max_tokens=24,
                                                       temperature=0, logprobs=True, top_logprobs=2)
    choice = completion.choices[0]
    assert "Paris" in choice.message.content and choice.finish_reason == "stop"
    assert b"".join(bytes(entry.bytes) for entry in choice.logprobs.content).decode() == choice.message.content
    # The end-of-turn token ends the answer; it is not one of its tokens.
    assert len(choice.logprobs.content) == completion.usage.completion_tokens - 1


def test_streamed_logprobs_equal_the_non_streamed_ones(openai_client, models):
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 12, "temperature": 0, "logprobs": True,
               "top_logprobs": 2}
    whole = openai_client.chat.completions.create(**request).choices[0].logprobs.content
    chunks = list(openai_client.chat.completions.create(**request, stream=True))
    streamed = [entry for chunk in chunks if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in whole]
    # Equal to float32 rounding, not bit for bit: the second request reuses the first one's prompt prefix, so its
    # prompt goes through the linear layers as fewer rows, and the CPU's few-row products sum in an order that
    # depends on the row count (workers/few_rows_linear.py; docs/models.md).
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-5)
    assert [[t.token for t in e.top_logprobs] for e in streamed] == [[t.token for t in e.top_logprobs] for e in whole]


def test_n_gives_that_many_choices_and_usage_counts_the_prompt_once(openai_client, alice, models):
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 6, "temperature": 1.0}
    single = openai_client.chat.completions.create(**request)
    completion = openai_client.chat.completions.create(**request, n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    assert all(choice.finish_reason == "length" and choice.message.content for choice in completion.choices)
    assert completion.usage.prompt_tokens == single.usage.prompt_tokens
    assert completion.usage.completion_tokens == 3 * 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 18
    generation = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"))
    assert [c["text"] for c in generation.output["choices"]] == [c.message.content for c in completion.choices]
    # The conversation goes on with the first choice.
    assert generation.answer.content == completion.choices[0].message.content == generation.completion


def test_streamed_choices_carry_their_index_and_their_own_finish_reason(openai_client, models):
    chunks = list(openai_client.chat.completions.create(
        model=models["tiny"], messages=HELLO, max_tokens=5, temperature=1.0, n=3, stream=True,
        stream_options={"include_usage": True}))
    texts, finishes = {}, {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1, 2] and all(texts.values())
    assert finishes == {0: "length", 1: "length", 2: "length"}
    assert chunks[-1].usage.completion_tokens == 15


def test_n_times_max_tokens_counts_against_the_token_limits(hub, models):
    account = make_account("n-limits")
    account.key.tokens_per_minute = 200
    account.key.save()
    client = openai.OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=120)
    request = {"model": models["tiny"], "messages": HELLO, "max_tokens": 60}
    client.chat.completions.create(**request)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**request, n=4)


def test_a_logit_bias_of_plus_100_makes_greedy_output_that_token(openai_client, models):
    the = _single_token(_tokenizer(models["tiny"]), " the")
    completion = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=5,
                                                       temperature=0, logit_bias={str(the): 100})
    assert completion.choices[0].message.content == " the" * 5


def test_a_nul_token_is_answered_and_its_logprob_shows_the_byte(openai_client, models):
    # Byte-level BPE has a token for the byte 0; its text could not be stored (a 500 found by the schema fuzz).
    nul = _tokenizer(models["tiny"]).convert_tokens_to_ids(chr(256))  # GPT-2's stand-in for byte 0
    completion = openai_client.completions.create(model=models["tiny"], prompt="hi", max_tokens=2, temperature=0,
                                                  logit_bias={str(nul): 100}, logprobs=1)
    assert completion.choices[0].text == "\ufffd" * 2
    assert completion.choices[0].logprobs.tokens == ["\\x00"] * 2
    chat = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=2, temperature=0,
                                                 logit_bias={str(nul): 100}, logprobs=True, top_logprobs=2)
    assert [(entry.token, entry.bytes) for entry in chat.choices[0].logprobs.content] == [("\\x00", [0])] * 2


def test_a_logit_bias_of_minus_100_bans_a_token(openai_client, models):
    paris = _single_token(_tokenizer(models["default"]), " Paris")
    request = {"model": models["default"], "messages": FRANCE, "max_tokens": 24, "temperature": 0}
    assert " Paris" in openai_client.chat.completions.create(**request).choices[0].message.content
    banned = openai_client.chat.completions.create(**request, logit_bias={str(paris): -100}, logprobs=True)
    assert all(entry.token != " Paris" for entry in banned.choices[0].logprobs.content)


def test_a_frequency_penalty_breaks_a_repetitive_greedy_answer(openai_client, models):
    request = {"model": models["default"], "max_tokens": 40, "temperature": 0,
               "messages": [{"role": "user", "content": "Write the word 'hello' thirty times, separated by spaces."}]}
    plain = openai_client.chat.completions.create(**request).choices[0].message.content
    penalised = openai_client.chat.completions.create(**request, frequency_penalty=1.5).choices[0].message.content
    assert plain.lower().count("hello") >= 10
    assert penalised.lower().count("hello") < plain.lower().count("hello") / 2
    present = openai_client.chat.completions.create(**request, presence_penalty=2.0).choices[0].message.content
    assert present != plain


def test_the_same_seed_gives_the_same_text_whatever_shares_the_batch(hub, models):
    account = make_account("seed")
    client = openai.OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=300)
    seeded = {"model": models["tiny"], "messages": HELLO, "max_tokens": 24, "temperature": 1.0, "seed": 11,
              "extra_body": {"cache": False}}
    alone = client.chat.completions.create(**seeded).choices[0].message.content
    # Long enough to be still generating when the seeded request joins them (the tiny model makes hundreds of
    # tokens a second).
    neighbours = [{"model": models["tiny"], "messages": [{"role": "user", "content": f"Story number {i}."}],
                   "max_tokens": 1500, "temperature": 1.0, "extra_body": {"ignore_eos": True}} for i in range(3)]
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(client.chat.completions.create, **body) for body in neighbours]
        running_rows = GenerationRequest.objects.filter(user=account.user, state=GenerationRequest.State.RUNNING)
        wait_for(running_rows.count, lambda count: count == len(neighbours), timeout=60, interval=0.05)
        together = pool.submit(client.chat.completions.create, **seeded).result()
        finished = [future.result() for future in running]
    assert together.choices[0].message.content == alone
    rows = {row.id.hex: row for row in GenerationRequest.objects.filter(user=account.user)}
    mine = rows[together.id.removeprefix("chatcmpl-")]
    others = [rows[reply.id.removeprefix("chatcmpl-")] for reply in finished]
    assert all(other.started_at < mine.started_at and mine.finished_at < other.finished_at
               for other in others), "the seeded request did not run beside its neighbours"


def test_every_answer_and_chunk_carries_one_stable_system_fingerprint(openai_client, models):
    first = openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=3)
    second = openai_client.chat.completions.create(model=models["tiny"], messages=FRANCE, max_tokens=3)
    assert first.system_fingerprint.startswith("fp_") and first.system_fingerprint == second.system_fingerprint
    chunks = list(openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=3,
                                                        stream=True))
    assert {chunk.system_fingerprint for chunk in chunks} == {first.system_fingerprint}
    other = openai_client.chat.completions.create(model=models["default"], messages=HELLO, max_tokens=2)
    assert other.system_fingerprint.startswith("fp_") and other.system_fingerprint != first.system_fingerprint


def test_metadata_user_and_store_are_kept_on_the_request(openai_client, alice, models):
    completion = openai_client.chat.completions.create(
        model=models["tiny"], messages=HELLO, max_tokens=2, user="end-user-42", store=False,
        metadata={"project": "atlas", "run": "7"})
    generation = GenerationRequest.objects.get(id=completion.id.removeprefix("chatcmpl-"), user=alice.user)
    assert generation.metadata == {"project": "atlas", "run": "7"}
    assert generation.params["user"] == "end-user-42"
    assert generation.answer.content == completion.choices[0].message.content  # stored regardless of `store`


def test_the_response_cache_does_not_answer_what_its_text_cannot_reproduce(hub, alice, models):
    body = {"model": models["tiny"], "messages": HELLO, "max_tokens": 4, "temperature": 0, "cache": True}
    for extra in ({"logprobs": True}, {"n": 2}, {"frequency_penalty": 1.0}, {"logit_bias": {"5": 3}}):
        replies = [httpx.post(f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=60, json={**body, **extra})
                   for _ in range(2)]
        assert all(reply.status_code == 200 for reply in replies), replies[-1].text
        assert "x-aihub-cache" not in replies[1].headers
    plain = [httpx.post(f"{hub.api_url}/chat/completions", headers=alice.auth, timeout=60, json=body)
             for _ in range(2)]
    assert plain[1].headers["x-aihub-cache"] == "hit"


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 0}, "n"),
    ({"n": 9}, "n"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"the": 5}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"count": 3}}, "metadata"),
    ({"store": "no"}, "store"),
])
def test_bad_sampling_values_are_400s_naming_the_param_and_store_nothing(hub, models, extra, param):
    account = make_account("bad-sampling")
    reply = httpx.post(f"{hub.api_url}/chat/completions", headers=account.auth, timeout=60,
                       json={"model": models["tiny"], "messages": HELLO, "max_tokens": 2, **extra})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert not GenerationRequest.objects.filter(user=account.user).exists()


def test_a_logit_bias_outside_the_vocabulary_is_a_400_naming_it(openai_client, models):
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.chat.completions.create(model=models["tiny"], messages=HELLO, max_tokens=2,
                                              logit_bias={"999999": 5})
    assert raised.value.body["param"] == "logit_bias"
