"""GET /chat/conversations/search: one's own messages by meaning (real all-MiniLM-L6-v2 vectors in pgvector)
and by words (PostgreSQL full-text), fused by reciprocal rank; messages stored through real chat completions."""
from __future__ import annotations

import os
import time

import httpx
import psutil
import pytest
from django.core.management import call_command

from apps.chat.message_embeddings import PASSAGE_CHARS, message_embeddings_update
from apps.chat.models import Message, MessageEmbedding
from apps.chat.search import RRF_K
from tests.conftest import EMBEDDING_MODEL, RUN_DIR, make_account
from tests.support.processes import ProcessGroup, wait_until_healthy

PUPPY = "I adopted a puppy last week and it chews every pair of shoes I own."
PARAPHRASE = "new dog destroying footwear"  # not one word in common with PUPPY
OTHERS = ["The quarterly tax return is due at the end of next month.",
          "How do I configure nginx as a reverse proxy for two sites?"]


def _client_ports(hub, name: str) -> list[int]:
    """The local ports of the PostgreSQL connections of the hub's process `name` and its children (pool processes)."""
    from django.conf import settings

    server_port = int(settings.DATABASES["default"]["PORT"])
    parent = psutil.Process(hub.processes.processes[name].pid)
    return [connection.laddr.port for process in [parent, *parent.children(recursive=True)]
            for connection in process.net_connections(kind="tcp")
            if connection.raddr and connection.raddr.port == server_port]


def _store(account, hub, models, text: str, conversation_id: str | None = None) -> tuple[str, int]:
    """A real chat completion: the user's message and the model's answer are stored. Returns the conversation
    and the id of the user's message."""
    body = {"model": models["tiny"], "max_tokens": 3, "messages": [{"role": "user", "content": text}]}
    if conversation_id:
        body["conversation_id"] = conversation_id
    answer = httpx.post(f"{hub.api_url}/chat/completions", json=body, headers=account.auth, timeout=120)
    assert answer.status_code == 200, answer.text
    conversation_id = answer.json()["conversation_id"]
    message = Message.objects.filter(conversation_id=conversation_id, role="user", content=text).latest("id")
    return conversation_id, message.id


def _wait_embedded(message_ids: list[int], timeout: float = 90) -> None:
    """The background task's work, as the search will see it: a vector for each message."""
    deadline = time.monotonic() + timeout
    while set(MessageEmbedding.objects.filter(message_id__in=message_ids).values_list("message_id", flat=True)) \
            != set(message_ids):
        assert time.monotonic() < deadline, "the messages were not embedded in time"
        time.sleep(0.3)


def _search(hub, account, base_url: str | None = None, **params) -> dict:
    response = httpx.get(f"{base_url or hub.base_url}/api/v1/chat/conversations/search", params=params,
                         headers=account.auth, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def library(hub, models):
    """One user's messages in three conversations, embedded."""
    account = make_account("searcher")
    puppy_conversation, puppy = _store(account, hub, models, PUPPY)
    others = [_store(account, hub, models, text)[1] for text in OTHERS]
    _wait_embedded([puppy, *others])
    return {"account": account, "puppy": puppy, "puppy_conversation": puppy_conversation, "others": others}


def test_a_paraphrase_with_no_word_in_common_finds_the_message(hub, library):
    body = _search(hub, library["account"], q=PARAPHRASE)
    assert body["object"] == "list" and body["rankers"] == ["semantic", "text"]
    first = body["data"][0]
    assert (first["message_id"], first["role"], first["rankers"]) == (library["puppy"], "user", ["semantic"])
    assert first["conversation_id"] == library["puppy_conversation"]
    assert first["conversation_title"] == PUPPY[:80]
    assert first["snippet"] == PUPPY and first["highlights"] == []
    assert first["score"] == pytest.approx(1 / (RRF_K + 1))
    # The unrelated messages are not near enough to count as matches at all.
    assert not {hit["message_id"] for hit in body["data"]} & set(library["others"])


def test_words_find_the_message_with_the_matching_words_highlighted(hub, library):
    body = _search(hub, library["account"], q="chewing shoes", mode="text")  # stemmed: chews ~ chewing
    assert body["rankers"] == ["text"]
    assert [hit["message_id"] for hit in body["data"]] == [library["puppy"]]
    hit = body["data"][0]
    assert [hit["snippet"][start:end] for start, end in hit["highlights"]] == ["chews", "shoes"]
    assert hit["rankers"] == ["text"]


def test_the_semantic_mode_alone_ranks_by_meaning_only(hub, library):
    body = _search(hub, library["account"], q="filing taxes", mode="semantic")
    assert body["rankers"] == ["semantic"]
    assert body["data"][0]["message_id"] == library["others"][0]
    assert all(hit["rankers"] == ["semantic"] for hit in body["data"])


def test_a_message_both_rankers_found_comes_first_with_the_fused_score(hub, models):
    account = make_account("fusion")
    both = _store(account, hub, models, "Our puppy chewed through my new running shoes.")[1]
    words_only = _store(account, hub, models, "The marathon shop sells shoes and socks.")[1]
    meaning_only = _store(account, hub, models, "My young dog keeps destroying footwear.")[1]
    _wait_embedded([both, words_only, meaning_only])
    q = "puppy or shoes"

    def ranks(mode):
        return {hit["message_id"]: rank for rank, hit in enumerate(_search(hub, account, q=q, mode=mode)["data"], 1)}
    by_text, by_meaning = ranks("text"), ranks("semantic")
    assert both in by_text and both in by_meaning and meaning_only not in by_text
    hybrid = _search(hub, account, q=q)["data"]
    assert hybrid[0]["message_id"] == both and hybrid[0]["rankers"] == ["semantic", "text"]
    for hit in hybrid:  # every score is the sum of 1 / (60 + rank) over the rankers that found it
        expected = sum(1 / (RRF_K + found[hit["message_id"]]) for found in (by_text, by_meaning)
                       if hit["message_id"] in found)
        assert hit["score"] == pytest.approx(expected, abs=1e-6)
    assert [hit["score"] for hit in hybrid] == sorted((hit["score"] for hit in hybrid), reverse=True)


def test_a_long_message_is_found_by_a_passage_far_into_it(hub, models):
    account = make_account("long")
    filler = " ".join(f"Line {i} of the meeting notes lists nothing of interest." for i in range(60))
    text = filler + " At the end, everyone agreed the office cat should get a bigger food bowl."
    assert len(text) > 3 * PASSAGE_CHARS
    message = _store(account, hub, models, text)[1]
    _wait_embedded([message])
    assert MessageEmbedding.objects.filter(message_id=message).count() > 3
    hit = _search(hub, account, q="feeding the kitten at work", mode="semantic")["data"][0]
    assert hit["message_id"] == message
    assert hit["snippet"].endswith("the office cat should get a bigger food bowl.")
    assert len(hit["snippet"]) <= PASSAGE_CHARS


def test_another_users_messages_never_appear(hub, models, library):
    bob = make_account("bob")
    secret = "The launch code for the rocket is pineapple."
    bobs = _store(bob, hub, models, secret)[1]
    _wait_embedded([bobs])
    searcher = library["account"]
    for q in ("pineapple", "rocket launch code", secret):
        assert all(hit["message_id"] != bobs for hit in _search(hub, searcher, q=q)["data"])
    assert _search(hub, bob, q="pineapple")["data"][0]["message_id"] == bobs
    found = {hit["message_id"] for hit in _search(hub, bob, q=PARAPHRASE)["data"]}
    assert library["puppy"] not in found


def test_results_are_paged_without_overlap(hub, models):
    account = make_account("pages")
    conversation = None
    ids = []
    for i in range(5):
        conversation, message = _store(account, hub, models, f"zephyr note number {i}", conversation)
        ids.append(message)
    pages = [_search(hub, account, q="zephyr", mode="text", limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [len(page["data"]) for page in pages] == [2, 2, 1]
    assert [page["has_more"] for page in pages] == [True, True, False]
    seen = [hit["message_id"] for page in pages for hit in page["data"]]
    assert sorted(seen) == sorted(ids)
    assert _search(hub, account, q="zephyr", mode="text", offset=5)["data"] == []


def test_a_redelivered_embedding_task_stores_nothing_twice(hub, library):
    vectors = MessageEmbedding.objects.filter(message_id=library["puppy"])
    before = list(vectors.values_list("id", "passage", "model"))
    # What a redelivered (or a second) task message runs: nothing is missing, so nothing is embedded.
    assert message_embeddings_update(conversation_id=library["puppy_conversation"]) == 0
    assert list(vectors.values_list("id", "passage", "model")) == before == [(before[0][0], 0, EMBEDDING_MODEL)]


def test_the_user_turn_of_a_request_that_was_cancelled_is_embedded_too(hub, models):
    """A chat completion's messages are embedded when its request ends; one that ends without an answer (its
    streaming client left) still has its user turn found by meaning."""
    account = make_account("cancelled")
    text = "My sourdough starter smells like nail polish remover after three days."
    body = {"model": models["tiny"], "max_tokens": 4000, "stream": True, "ignore_eos": True,
            "messages": [{"role": "user", "content": text}]}
    with httpx.stream("POST", f"{hub.api_url}/chat/completions", json=body, headers=account.auth,
                      timeout=120) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk: the request is running; then the client leaves
    message = Message.objects.get(conversation__user=account.user, role="user")
    generation = message.conversation.generations.get()
    deadline = time.monotonic() + 60
    while generation.state != "cancelled":
        assert time.monotonic() < deadline, generation.state
        time.sleep(0.3)
        generation.refresh_from_db()
    _wait_embedded([message.id])
    assert not Message.objects.filter(conversation=message.conversation, role="assistant").exists()


def test_a_worker_whose_database_connection_was_closed_between_tasks_embeds_the_next_message(hub, models):
    """A prefork worker (the default queue's) keeps its database connection from one task to the next; one that
    PostgreSQL closed meanwhile (a restart, an idle timeout, an operator) is replaced before a task uses it."""
    from django.db import connection

    account = make_account("reconnect")
    _, first = _store(account, hub, models, "Which houseplants survive a north-facing window?")
    _wait_embedded([first])
    with connection.cursor() as cursor:
        # The default worker's connections only (by their client ports), as PostgreSQL closing them would.
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND state = 'idle' AND client_port = ANY(%s)",
                       [_client_ports(hub, "default")])
        assert cursor.fetchone()[0] > 0
    _, second = _store(account, hub, models, "Is a snake plant happy in low light?")
    _wait_embedded([second])


def test_a_user_who_opts_out_is_searched_by_words_only_and_their_vectors_are_deleted(hub, models):
    account = make_account("private")
    assert httpx.get(f"{hub.api_url}/me", headers=account.auth).json()["conversation_embeddings"] is True
    conversation, message = _store(account, hub, models, PUPPY)
    _wait_embedded([message])
    patched = httpx.patch(f"{hub.api_url}/me", json={"conversation_embeddings": False}, headers=account.auth)
    assert patched.status_code == 200 and patched.json()["conversation_embeddings"] is False
    assert not MessageEmbedding.objects.filter(user=account.user).exists()
    body = _search(hub, account, q=PARAPHRASE)
    assert body["rankers"] == ["text"] and body["data"] == []
    assert [hit["message_id"] for hit in _search(hub, account, q="puppy")["data"]] == [message]
    later = _store(account, hub, models, "My kitten sleeps on the keyboard all day.", conversation)[1]
    assert message_embeddings_update(conversation_id=conversation) == 0  # the task's body makes none
    assert not MessageEmbedding.objects.filter(user=account.user).exists()
    # Back in: what they wrote meanwhile is embedded too.
    assert httpx.patch(f"{hub.api_url}/me", json={"conversation_embeddings": True},
                       headers=account.auth).json()["conversation_embeddings"] is True
    _wait_embedded([message, later])
    assert _search(hub, account, q=PARAPHRASE)["data"][0]["message_id"] == message


def test_vectors_of_another_model_are_never_compared_and_the_backfill_replaces_them(hub, models):
    account = make_account("model-change")
    message = _store(account, hub, models, "The violin lesson moved to Thursday afternoon.")[1]
    _wait_embedded([message])
    query = {"q": "music class rescheduled", "mode": "semantic"}
    assert _search(hub, account, **query)["data"][0]["message_id"] == message
    # As if the default embedding model had changed since: these vectors are another model's space.
    MessageEmbedding.objects.filter(message_id=message).update(model="retired:model")
    assert _search(hub, account, **query)["data"] == []
    call_command("embedmessages", "--prune", verbosity=0)
    assert set(MessageEmbedding.objects.filter(message_id=message).values_list("model", flat=True)) == {
        models["embedding"]}
    assert _search(hub, account, **query)["data"][0]["message_id"] == message


def test_a_message_deleted_in_the_database_takes_its_vectors_with_it(hub, models):
    """Not only through Django: a vector the background task stores while its conversation is being deleted
    cannot make the deletion fail, because the database cascades."""
    from django.db import connection

    account = make_account("deleting")
    conversation, message = _store(account, hub, models, "Remember to water the basil on the balcony.")
    _wait_embedded([message])
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM chat_message WHERE conversation_id = %s", [conversation])
    assert not MessageEmbedding.objects.filter(message_id=message).exists()
    deleted = httpx.delete(f"{hub.api_url}/chat/conversations/{conversation}", headers=account.auth)
    assert deleted.status_code == 204


@pytest.mark.parametrize("params, param", [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "x" * 1001}, "q"),
    ({"q": "cats", "limit": "0"}, "limit"),
    ({"q": "cats", "limit": "101"}, "limit"),
    ({"q": "cats", "limit": "ten"}, "limit"),
    ({"q": "cats", "offset": "-1"}, "offset"),
    ({"q": "cats", "mode": "fuzzy"}, "mode"),
    ({"q": "cats", "after": "12"}, "after"),
    ({"q": "cat\x00s"}, "q"),
    ({"q": "cats", "limit": "5", "offset": "ten"}, "offset"),
])
def test_bad_input_is_a_400_naming_the_parameter(hub, alice, params, param):
    response = httpx.get(f"{hub.api_url}/chat/conversations/search", params=params, headers=alice.auth)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert error["message"] and error["code"]


def test_it_needs_a_key(hub):
    response = httpx.get(f"{hub.api_url}/chat/conversations/search", params={"q": "cats"})
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"


@pytest.fixture(scope="module")
def without_embeddings(hub):
    """Another daphne on the same services, with AIHUB_CONVERSATION_EMBEDDINGS off."""
    from aihub_project.embedded import free_port

    port = free_port()
    processes = ProcessGroup(dict(os.environ), RUN_DIR / "logs")
    processes.start_web(port, name="web-no-embeddings", env={"AIHUB_CONVERSATION_EMBEDDINGS": "false"})
    base_url = f"http://127.0.0.1:{port}"
    wait_until_healthy(base_url, processes)
    yield base_url
    processes.stop()


def test_with_embeddings_off_the_search_is_full_text_only(hub, library, without_embeddings):
    account = library["account"]
    body = _search(hub, account, without_embeddings, q=PARAPHRASE)
    assert body["rankers"] == ["text"] and body["data"] == []  # the vectors stored earlier are not used
    body = _search(hub, account, without_embeddings, q="puppy")
    assert body["rankers"] == ["text"] and [hit["message_id"] for hit in body["data"]] == [library["puppy"]]
    refused = httpx.get(f"{without_embeddings}/api/v1/chat/conversations/search", headers=account.auth,
                        params={"q": "puppy", "mode": "semantic"})
    assert refused.status_code == 400
    assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("mode",
                                                                                  "semantic_search_unavailable")
    # A message stored through it is searchable by its words at once, with no vector made for it by the web.
    conversation = httpx.post(f"{without_embeddings}/api/v1/chat/completions", headers=account.auth, timeout=120,
                              json={"model": "tiny:chat", "max_tokens": 2,
                                    "messages": [{"role": "user", "content": "a quokka smiled at me"}]})
    assert conversation.status_code == 200
    hits = _search(hub, account, without_embeddings, q="quokka")["data"]
    assert [hit["role"] for hit in hits] == ["user"]
