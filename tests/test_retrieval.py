"""Retrieval in chat and the Responses file_search tool, through the official SDK, with the real default chat
model, the real embedding worker and real PostgreSQL + pgvector."""
from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest
from websockets.sync.client import connect

from tests.conftest import make_account
from tests.support.documents import topic_documents

QUESTION = "Why does the sea go up and down two times every day?"
TIDES_WORDS = "twice each day"  # in tides.json only


def _client(hub, account) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=180)


@pytest.fixture(scope="module")
def library(hub, models):
    """A user's store of four documents on four topics, embedded."""
    owner = make_account("reader")
    client = _client(hub, owner)
    ids = {name: client.files.create(file=(name, io.BytesIO(content)), purpose="assistants").id
           for name, content in topic_documents().items()}
    store = client.vector_stores.create(name="library", file_ids=list(ids.values()))
    deadline = time.monotonic() + 240
    while client.vector_stores.retrieve(store.id).file_counts.in_progress:
        assert time.monotonic() < deadline, "the store's files are still being embedded"
        time.sleep(0.5)
    return {"account": owner, "client": client, "store": store, "ids": ids}


def _ask(client, **extra):
    return client.chat.completions.create(model="smollm2:135m", max_tokens=8, temperature=0,
                                          messages=[{"role": "user", "content": QUESTION}], **extra)


def _prompt_of(conversation_id: str) -> list[dict]:
    """The exact messages the model was given, as the hub records them with the request."""
    from apps.chat.models import GenerationRequest

    return GenerationRequest.objects.get(conversation_id=conversation_id).prompt_messages


def _error(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


def test_a_chat_with_retrieval_puts_the_right_chunk_into_the_prompt_and_says_so(hub, library):
    client, store = library["client"], library["store"]
    plain = _ask(client)
    answer = _ask(client, extra_body={"retrieval": {"vector_store_ids": [store.id], "max_num_results": 2}})
    body = answer.to_dict()
    used = body["retrieval"]["chunks"]
    assert body["retrieval"]["query"] == QUESTION and 1 <= len(used) <= 2
    assert used[0]["filename"] == "tides.json" and used[0]["file_id"] == library["ids"]["tides.json"]
    assert used[0]["vector_store_id"] == store.id and used[0]["chunk_index"] == 0 and used[0]["score"] > 0.3
    assert "text" not in used[0]
    # The model saw the chunk: it is in the recorded prompt, and the prompt is that much longer in real tokens.
    prompt = _prompt_of(body["conversation_id"])
    assert prompt[0]["role"] == "system" and TIDES_WORDS in prompt[0]["content"]
    assert 'file="tides.json"' in prompt[0]["content"] and prompt[-1] == {**prompt[-1], "content": QUESTION}
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 40
    # The conversation keeps the user's message as written, and shows the chunks with the answer.
    conversation = httpx.get(f"{hub.api_url}/chat/conversations/{body['conversation_id']}",
                             headers=library["account"].auth, timeout=60).json()
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][0]["content"] == QUESTION and conversation["messages"][0]["retrieval"] is None
    assert conversation["messages"][1]["retrieval"]["chunks"] == used


def test_the_final_streamed_chunk_says_which_chunks_were_used(library):
    client, store = library["client"], library["store"]
    chunks = list(_ask(client, stream=True, stream_options={"include_usage": True},
                       extra_body={"retrieval": {"vector_store_ids": [store.id], "max_num_results": 1}}))
    assert "retrieval" not in chunks[0].to_dict()
    final = chunks[-1].to_dict()
    assert final["usage"]["prompt_tokens"] > 0
    assert [c["filename"] for c in final["retrieval"]["chunks"]] == ["tides.json"]
    assert any(c.choices and c.choices[0].finish_reason and c.to_dict().get("retrieval") for c in chunks)


def test_the_websocket_takes_retrieval_and_says_which_chunks_in_its_accepted_message(hub, library):
    account, store = library["account"], library["store"]
    request = {"model": "smollm2:135m", "max_tokens": 4, "messages": [{"role": "user", "content": QUESTION}],
               "retrieval": {"vector_store_ids": [store.id], "max_num_results": 1}}
    with connect(f"{hub.ws_url}/ws/v1/chat/", additional_headers=account.auth, open_timeout=10) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "authenticated"
        ws.send(json.dumps({"type": "chat.completion", "request": request}))
        accepted = json.loads(ws.recv(timeout=120))
        assert accepted["type"] == "accepted", accepted
        assert [c["filename"] for c in accepted["retrieval"]["chunks"]] == ["tides.json"]
        while json.loads(ws.recv(timeout=120))["type"] not in ("done", "error"):
            pass
    assert TIDES_WORDS in _prompt_of(accepted["conversation_id"])[0]["content"]


def test_filters_and_the_score_threshold_can_leave_nothing_to_add(library):
    client, store = library["client"], library["store"]
    for retrieval in ({"filters": {"type": "eq", "key": "lang", "value": "en"}}, {"score_threshold": 0.99}):
        answer = _ask(client, extra_body={"retrieval": {"vector_store_ids": [store.id], **retrieval}})
        assert answer.to_dict()["retrieval"]["chunks"] == [] and answer.to_dict()["retrieval"]["found"] == 0
        assert [m["role"] for m in _prompt_of(answer.to_dict()["conversation_id"])] == ["user"]


def test_chunks_that_do_not_fit_the_context_are_dropped_lowest_score_first_never_the_users_words(library):
    client, store = library["client"], library["store"]
    # SmolLM2 holds 2048 tokens: after a long earlier turn, only a chunk or two of the four found still fit.
    filler = "The weather was mild and the garden was quiet. " * 105
    answer = client.chat.completions.create(
        model="smollm2:135m", max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": filler}, {"role": "assistant", "content": "Noted."},
                  {"role": "user", "content": QUESTION}],
        extra_body={"retrieval": {"vector_store_ids": [store.id], "max_num_results": 4}})
    record = answer.to_dict()["retrieval"]
    assert record["found"] == 4 and 1 <= len(record["chunks"]) < 4
    assert record["chunks"][0]["filename"] == "tides.json"
    prompt = _prompt_of(answer.to_dict()["conversation_id"])
    assert prompt[1]["content"] == filler and prompt[-1]["content"] == QUESTION


def test_retrieval_is_refused_for_another_users_store_and_for_unknown_keys(hub, library):
    stranger = make_account("stranger")
    client = _client(hub, stranger)
    from apps.chat.models import Conversation

    with pytest.raises(openai.NotFoundError) as exc_info:
        _ask(client, extra_body={"retrieval": {"vector_store_ids": [library["store"].id]}})
    assert _error(exc_info)["param"] == "retrieval.vector_store_ids"
    assert _error(exc_info)["code"] == "vector_store_not_found"
    assert not Conversation.objects.filter(user=stranger.user).exists()  # nothing stored
    with pytest.raises(openai.BadRequestError) as exc_info:
        _ask(library["client"], extra_body={"retrieval": {"vector_store_ids": [library["store"].id], "top_k": 3}})
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("retrieval.top_k", "unsupported_parameter")
    with pytest.raises(openai.BadRequestError) as exc_info:
        _ask(library["client"], extra_body={"retrieval": {"vector_store_ids": []}})
    assert _error(exc_info)["param"] == "retrieval.vector_store_ids"
    with pytest.raises(openai.BadRequestError) as exc_info:
        _ask(library["client"], extra_body={"retrieval": {"vector_store_ids": [library["store"].id],
                                                          "filters": {"type": "eq", "key": "x"}}})
    assert _error(exc_info)["param"].startswith("retrieval.filters")


def test_the_responses_file_search_tool_returns_its_call_its_results_and_a_cited_answer(library):
    client, store = library["client"], library["store"]
    response = client.responses.create(model="smollm2:135m", input=QUESTION, max_output_tokens=16, temperature=0,
                                       tools=[{"type": "file_search", "vector_store_ids": [store.id],
                                               "max_num_results": 2}],
                                       include=["file_search_call.results"])
    assert response.status in ("completed", "incomplete")
    call, message = response.output[0], response.output[1]
    assert call.type == "file_search_call" and call.status == "completed" and call.queries == [QUESTION]
    assert call.results[0].filename == "tides.json" and call.results[0].file_id == library["ids"]["tides.json"]
    assert TIDES_WORDS in call.results[0].text and call.results[0].score > 0.3
    assert message.type == "message" and response.output_text
    citation = message.content[0].annotations[0]
    assert (citation.type, citation.file_id, citation.filename) == ("file_citation", library["ids"]["tides.json"],
                                                                    "tides.json")
    assert citation.index == len(response.output_text)
    assert response.tools[0].type == "file_search" and response.tools[0].vector_store_ids == [store.id]
    # Without include, the call carries no results; the stored response reads the same.
    bare = client.responses.create(model="smollm2:135m", input=QUESTION, max_output_tokens=4,
                                   tools=[{"type": "file_search", "vector_store_ids": [store.id]}])
    assert bare.output[0].type == "file_search_call" and bare.output[0].results is None
    assert client.responses.retrieve(bare.id).output[0].queries == [QUESTION]


def test_a_streamed_file_search_sends_openais_events_in_order(library):
    client, store = library["client"], library["store"]
    stream = client.responses.create(model="smollm2:135m", input=QUESTION, max_output_tokens=8, stream=True,
                                     tools=[{"type": "file_search", "vector_store_ids": [store.id]}])
    kinds = [event.type for event in stream]
    search = ["response.output_item.added", "response.file_search_call.in_progress",
              "response.file_search_call.searching", "response.file_search_call.completed",
              "response.output_item.done"]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[2:7] == search
    assert kinds[7] == "response.output_item.added"  # the message follows the search
    assert kinds.index("response.output_text.annotation.added") < kinds.index("response.output_text.done")
    assert kinds[-1] in ("response.completed", "response.incomplete")


def test_file_search_refuses_other_includes_another_users_store_and_a_second_tool(hub, library):
    client, store = library["client"], library["store"]
    tool = {"type": "file_search", "vector_store_ids": [store.id]}
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.responses.create(model="smollm2:135m", input=QUESTION, tools=[tool],
                                include=["message.output_text.logprobs"])
    assert (_error(exc_info)["param"], _error(exc_info)["code"]) == ("include.0", "unsupported_parameter")
    with pytest.raises(openai.NotFoundError) as exc_info:
        _client(hub, make_account("outsider")).responses.create(model="smollm2:135m", input=QUESTION, tools=[tool])
    assert _error(exc_info)["param"] == "tools.0.vector_store_ids"
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.responses.create(model="smollm2:135m", input=QUESTION, tools=[tool, tool])
    assert _error(exc_info)["param"] == "tools"
    raw = httpx.post(f"{hub.api_url}/responses", headers=library["account"].auth, timeout=60,
                     json={"input": QUESTION, "tools": [{**tool, "ranking_options": {"hybrid_search": {}}}]})
    assert raw.status_code == 400 and json.loads(raw.text)["error"]["param"] == "tools.0.ranking_options.hybrid_search"
