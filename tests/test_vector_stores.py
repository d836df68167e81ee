"""Vector stores through the official SDK, against the real embedding worker and real PostgreSQL + pgvector."""
from __future__ import annotations

import io
import time

import httpx
import openai
import pytest

from tests.conftest import make_account
from tests.support.documents import SOURDOUGH, empty_pdf, topic_documents

QUESTIONS = {  # a question per document, in other words than the document's
    "tides.json": "Why does the sea go up and down two times every day?",
    "sourdough.txt": "How do I make a loaf of bread with a starter?",
    "volcanoes.md": "What makes lava come out of a mountain?",
    "chess.pdf": "Which chess piece can jump, and how does it move?",
}


def _client(hub, account) -> openai.OpenAI:
    return openai.OpenAI(base_url=hub.api_url, api_key=account.raw_key, max_retries=0, timeout=120)


def _upload(client, name: str, content: bytes) -> str:
    return client.files.create(file=(name, io.BytesIO(content)), purpose="assistants").id


def _settled(client, store_id: str, timeout: float = 180):
    """The store once no file is in progress."""
    deadline = time.monotonic() + timeout
    while True:
        store = client.vector_stores.retrieve(store_id)
        if store.file_counts.in_progress == 0:
            return store
        assert time.monotonic() < deadline, f"files still in progress: {store.file_counts}"
        time.sleep(0.5)


def _error(exc_info) -> dict:
    return exc_info.value.response.json()["error"]


@pytest.fixture(scope="module")
def library(hub, models):
    """Alice's store of four documents on four topics (Markdown, text, JSON, PDF), embedded."""
    alice = make_account("librarian")
    client = _client(hub, alice)
    ids = {name: _upload(client, name, content) for name, content in topic_documents().items()}
    store = client.vector_stores.create(name="library", file_ids=list(ids.values()))
    assert store.status == "in_progress" and store.file_counts.total == 4
    store = _settled(client, store.id)
    return {"account": alice, "client": client, "store": store, "ids": ids}


def test_a_store_answers_each_question_with_the_right_document_first(library):
    client, store = library["client"], library["store"]
    assert (store.status, store.file_counts.completed, store.file_counts.failed) == ("completed", 4, 0)
    assert store.usage_bytes > 4 * 384 * 4
    for filename, question in QUESTIONS.items():
        page = client.vector_stores.search(store.id, query=question)
        hits = page.data
        assert hits[0].filename == filename, (question, [(hit.filename, hit.score) for hit in hits])
        assert hits[0].file_id == library["ids"][filename]
        assert hits[0].content[0].type == "text" and hits[0].content[0].text
        assert 0 < hits[0].score <= 1 and hits[0].score > hits[1].score
    assert "twice each day" in client.vector_stores.search(store.id, query=QUESTIONS["tides.json"]).data[0] \
        .content[0].text


def test_the_search_page_has_openais_shape(hub, library):
    raw = httpx.post(f"{hub.api_url}/vector_stores/{library['store'].id}/search", headers=library["account"].auth,
                     json={"query": ["bread", "lava"], "max_num_results": 2}, timeout=120).json()
    assert raw["object"] == "vector_store.search_results.page" and raw["search_query"] == ["bread", "lava"]
    assert raw["has_more"] is False and raw["next_page"] is None and len(raw["data"]) == 2
    assert {hit["filename"] for hit in raw["data"]} == {"sourdough.txt", "volcanoes.md"}
    assert set(raw["data"][0]) == {"file_id", "filename", "score", "attributes", "content"}


def test_filters_select_chunks_by_their_files_attributes(library):
    client, store, ids = library["client"], library["store"], library["ids"]
    attributes = {"tides.json": {"field": "science", "year": 2021, "reviewed": True},
                  "volcanoes.md": {"field": "science", "year": 2019, "reviewed": False},
                  "sourdough.txt": {"field": "kitchen", "year": 2023},
                  "chess.pdf": {"field": "games", "year": 2020}}
    for name, values in attributes.items():
        updated = client.vector_stores.files.update(ids[name], vector_store_id=store.id, attributes=values)
        assert updated.attributes == values

    def found(filters, query="Tell me something", n=10):
        return sorted(hit.filename for hit in client.vector_stores.search(store.id, query=query, filters=filters,
                                                                          max_num_results=n).data)
    assert found({"type": "eq", "key": "field", "value": "science"}) == ["tides.json", "volcanoes.md"]
    assert found({"type": "ne", "key": "field", "value": "science"}) == ["chess.pdf", "sourdough.txt"]
    assert found({"type": "gte", "key": "year", "value": 2021}) == ["sourdough.txt", "tides.json"]
    assert found({"type": "lt", "key": "year", "value": 2020}) == ["volcanoes.md"]
    assert found({"type": "eq", "key": "reviewed", "value": True}) == ["tides.json"]
    assert found({"type": "or", "filters": [{"type": "eq", "key": "field", "value": "games"},
                                            {"type": "and", "filters": [
                                                {"type": "eq", "key": "field", "value": "science"},
                                                {"type": "lte", "key": "year", "value": 2019}]}]}) == [
        "chess.pdf", "volcanoes.md"]
    assert found({"type": "in", "key": "field", "value": ["kitchen", "games"]}) == ["chess.pdf", "sourdough.txt"]
    assert found({"type": "eq", "key": "year", "value": "2021"}) == []  # the string is not the number
    # The filter narrows the candidates, the ranking stays semantic: the bread question within science.
    assert found({"type": "eq", "key": "field", "value": "kitchen"}, query=QUESTIONS["volcanoes.md"], n=1) == [
        "sourdough.txt"]


def test_the_score_threshold_drops_weak_matches(library):
    client, store = library["client"], library["store"]
    everything = client.vector_stores.search(store.id, query=QUESTIONS["chess.pdf"]).data
    assert len(everything) == 4
    cut = (everything[0].score + everything[1].score) / 2
    kept = client.vector_stores.search(store.id, query=QUESTIONS["chess.pdf"],
                                       ranking_options={"score_threshold": cut}).data
    assert [hit.filename for hit in kept] == ["chess.pdf"]
    assert client.vector_stores.search(store.id, query=QUESTIONS["chess.pdf"],
                                       ranking_options={"score_threshold": 1.0}).data == []
    assert len(client.vector_stores.search(store.id, query="anything", max_num_results=2).data) == 2


def test_another_users_store_is_404_and_never_leaks_a_chunk(hub, library):
    alice_store = library["store"].id
    bob = make_account("bob")
    bobs = _client(hub, bob)
    for call in (lambda: bobs.vector_stores.retrieve(alice_store),
                 lambda: bobs.vector_stores.search(alice_store, query="bread"),
                 lambda: bobs.vector_stores.files.list(alice_store),
                 lambda: bobs.vector_stores.files.retrieve(library["ids"]["chess.pdf"], vector_store_id=alice_store),
                 lambda: bobs.vector_stores.files.delete(library["ids"]["chess.pdf"], vector_store_id=alice_store),
                 lambda: bobs.vector_stores.update(alice_store, name="mine now"),
                 lambda: bobs.vector_stores.delete(alice_store)):
        with pytest.raises(openai.NotFoundError) as exc_info:
            call()
        assert _error(exc_info)["code"] == "vector_store_not_found"
    # Alice's file cannot go into Bob's store, and Bob's own store on the same topic only answers with his.
    own = bobs.vector_stores.create(name="bob's")
    with pytest.raises(openai.NotFoundError):
        bobs.vector_stores.files.create(own.id, file_id=library["ids"]["sourdough.txt"])
    mine = _upload(bobs, "bread.txt", b"My own notes: sourdough starter, flour, water, a hot oven for the loaf.")
    bobs.vector_stores.files.create(own.id, file_id=mine)
    _settled(bobs, own.id)
    hits = bobs.vector_stores.search(own.id, query=QUESTIONS["sourdough.txt"], max_num_results=50).data
    assert [hit.file_id for hit in hits] == [mine]
    assert alice_store not in [store.id for store in bobs.vector_stores.list()]
    # A search naming both stores is refused as a whole, never answered from the one he owns.
    from apps.core.errors import AppError
    from apps.vectorstores.search import vector_store_search
    with pytest.raises(AppError) as refused:
        vector_store_search(user=bob.user, store_ids=[own.id, alice_store], query="bread")
    assert refused.value.status == 404


def test_a_file_that_cannot_be_read_fails_with_its_reason_and_the_store_keeps_working(hub, library):
    client = library["client"]
    store = client.vector_stores.create(name="mixed")
    good = _upload(client, "bread.md", SOURDOUGH.encode())
    blank = _upload(client, "blank.pdf", empty_pdf())
    garbage = _upload(client, "garbage.txt", bytes(range(256)) * 4)
    broken = _upload(client, "broken.pdf", b"%PDF-1.4 this is not a PDF at all \x00\x01\x02")
    batch = client.vector_stores.file_batches.create(store.id, file_ids=[good, blank, garbage, broken])
    assert batch.object == "vector_store.file_batch" and batch.file_counts.total == 4
    store = _settled(client, store.id)
    assert (store.status, store.file_counts.completed, store.file_counts.failed) == ("completed", 1, 3)
    failed = {entry.id: entry.last_error for entry in client.vector_stores.files.list(store.id, filter="failed")}
    assert failed[blank].code == "empty_file" and "no text" in failed[blank].message
    assert failed[garbage].code == "invalid_file" and "binary" in failed[garbage].message
    assert failed[broken].code == "invalid_file" and "PDF" in failed[broken].message
    assert [entry.id for entry in client.vector_stores.files.list(store.id, filter="completed")] == [good]
    assert client.vector_stores.search(store.id, query="bread").data[0].file_id == good
    batch = client.vector_stores.file_batches.retrieve(batch.id, vector_store_id=store.id)
    assert (batch.status, batch.file_counts.failed, batch.file_counts.completed) == ("completed", 3, 1)
    assert len(list(client.vector_stores.file_batches.list_files(batch.id, vector_store_id=store.id))) == 4


def test_deleting_a_file_removes_its_chunks_from_search(hub, library, models):
    from apps.vectorstores.models import Chunk

    client = library["client"]
    store = client.vector_stores.create(name="temporary", chunking_strategy={
        "type": "static", "static": {"max_chunk_size_tokens": 100, "chunk_overlap_tokens": 50}})
    long_text = " ".join([SOURDOUGH] * 6)
    bread = _upload(client, "long-bread.txt", long_text.encode())
    lava = _upload(client, "lava.md", topic_documents()["volcanoes.md"])
    entry = client.vector_stores.files.create(store.id, file_id=bread)
    assert entry.chunking_strategy.static.max_chunk_size_tokens == 100
    client.vector_stores.files.create(store.id, file_id=lava)
    _settled(client, store.id)
    chunks = list(Chunk.objects.filter(file__file_id=bread.removeprefix("file-")).order_by("index"))
    assert len(chunks) > 4 and max(chunk.tokens for chunk in chunks) <= 100
    assert chunks[1].text[:40] in chunks[0].text  # chunks overlap
    assert client.vector_stores.search(store.id, query="bread starter").data[0].file_id == bread
    deleted = client.vector_stores.files.delete(bread, vector_store_id=store.id)
    assert deleted.deleted and deleted.object == "vector_store.file.deleted"
    assert not Chunk.objects.filter(file__file_id=bread.removeprefix("file-")).exists()
    assert {hit.file_id for hit in client.vector_stores.search(store.id, query="bread starter").data} == {lava}
    assert client.vector_stores.retrieve(store.id).file_counts.total == 1
    # Deleting the uploaded file itself takes it out of every store.
    client.files.delete(lava)
    assert client.vector_stores.search(store.id, query="lava").data == []
    assert client.vector_stores.delete(store.id).deleted


def test_bad_inputs_are_refused_in_the_error_shape(hub, library):
    client, store = library["client"], library["store"]
    search = client.vector_stores.search
    cases = [
        (lambda: search(store.id, query="x", max_num_results=0), "max_num_results", "invalid_value"),
        (lambda: search(store.id, query="x", max_num_results=51), "max_num_results", "invalid_value"),
        (lambda: search(store.id, query=""), "query", "invalid_value"),
        (lambda: search(store.id, query="word " * 300), "query", "context_length_exceeded"),  # 254 tokens at most
        (lambda: search(store.id, query="x", rewrite_query=True), "rewrite_query", "unsupported_parameter"),
        (lambda: search(store.id, query="x", filters={"type": "like", "key": "a", "value": 1}), "filters.type",
         "invalid_value"),
        (lambda: search(store.id, query="x", filters={"type": "and", "filters": [{"type": "gt", "key": "a"}]}),
         "filters.filters.0.value", "invalid_value"),
        (lambda: search(store.id, query="x", ranking_options={"score_threshold": 2}), "ranking_options.score_threshold",
         "invalid_value"),
        (lambda: client.vector_stores.create(chunking_strategy={"type": "static", "static": {
            "max_chunk_size_tokens": 200, "chunk_overlap_tokens": 150}}),
         "chunking_strategy.static.chunk_overlap_tokens", "invalid_value"),
        (lambda: client.vector_stores.create(chunking_strategy={"type": "static", "static": {
            "max_chunk_size_tokens": 4096, "chunk_overlap_tokens": 0}}),
         "chunking_strategy.static.max_chunk_size_tokens", "invalid_value"),
        (lambda: client.vector_stores.create(description="d"), "description", "unsupported_parameter"),
        (lambda: client.vector_stores.list(limit=101), "limit", "invalid_value"),
        (lambda: client.vector_stores.files.update(library["ids"]["chess.pdf"], vector_store_id=store.id,
                                                   attributes={"k": [1, 2]}), "attributes", "invalid_value"),
        (lambda: client.files.create(file=("slides.pptx", io.BytesIO(b"x")), purpose="assistants"), "file",
         "unsupported_file"),
    ]
    for call, param, code in cases:
        with pytest.raises(openai.BadRequestError) as exc_info:
            call()
        error = _error(exc_info)
        assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    dataset = client.files.create(file=("train.jsonl", io.BytesIO(b'{"messages": []}\n')), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.vector_stores.files.create(store.id, file_id=dataset.id)
    assert _error(exc_info)["param"] == "file_id"
    assert client.vector_stores.retrieve(store.id).file_counts.total == 4  # nothing stored by a refusal


def test_stores_list_in_pages_and_can_be_renamed(hub):
    account = make_account("lister")
    client = _client(hub, account)
    made = [client.vector_stores.create(name=f"store {i}", metadata={"n": str(i)}).id for i in range(3)]
    first = client.vector_stores.list(limit=2)
    assert [store.id for store in first.data] == made[::-1][:2] and first.has_more
    assert [store.id for store in client.vector_stores.list()] == made[::-1]  # the SDK follows the pages
    assert [store.id for store in client.vector_stores.list(order="asc", after=made[0])] == made[1:]
    assert [store.id for store in client.vector_stores.list(order="desc", before=made[0], limit=1).data] == [made[1]]
    renamed = client.vector_stores.update(made[0], name="renamed", expires_after={"anchor": "last_active_at",
                                                                                   "days": 7})
    assert renamed.name == "renamed" and renamed.metadata == {"n": "0"} and renamed.expires_at > time.time()
    assert renamed.embedding_model == "all-minilm:l6-v2" and renamed.dimensions == 384  # type: ignore[attr-defined]


def test_ingestion_is_idempotent_under_redelivery_and_reembeds_on_demand(library):
    from apps.vectorstores.ingestion import vector_store_file_ingest
    from apps.vectorstores.models import Chunk, VectorStoreFile
    from apps.vectorstores.services import vector_store_reembed

    client = library["client"]
    store = client.vector_stores.create(name="redelivered")
    client.vector_stores.files.create(store.id, file_id=_upload(client, "bread.txt", SOURDOUGH.encode()))
    _settled(client, store.id)
    entry = VectorStoreFile.objects.get(store_id=store.id.removeprefix("vs_"))
    count = Chunk.objects.filter(file=entry).count()
    vector_store_file_ingest(str(entry.id), entry.generation)  # a late duplicate of the finished task
    assert Chunk.objects.filter(file=entry).count() == count
    # A worker lost half-way: the row is in progress with a stray chunk; the redelivered task starts clean.
    VectorStoreFile.objects.filter(id=entry.id).update(status="in_progress")
    Chunk.objects.create(store_id=entry.store_id, file=entry, index=99, text="stray", tokens=1, dims=384,
                         embedding=[0.0] * 383 + [1.0])
    vector_store_file_ingest(str(entry.id), entry.generation)
    entry.refresh_from_db()
    assert entry.status == "completed" and entry.attempts == 2
    assert Chunk.objects.filter(file=entry).count() == count and not Chunk.objects.filter(text="stray").exists()
    # Re-embedding (the admin action) runs every file again under a new generation; a stale message does nothing.
    assert vector_store_reembed(store=entry.store) == 1
    vector_store_file_ingest(str(entry.id), entry.generation)
    store = _settled(client, store.id)
    assert store.file_counts.completed == 1 and VectorStoreFile.objects.get(id=entry.id).generation == \
        entry.generation + 1
    assert client.vector_stores.search(store.id, query="bread").data[0].filename == "bread.txt"


def test_cancelling_a_batch_stops_its_files_not_yet_embedded(hub, library):
    from apps.vectorstores.models import Chunk

    client = library["client"]
    store = client.vector_stores.create(name="cancelled")
    texts = [f"Note {i}: " + " ".join([SOURDOUGH] * 3) for i in range(6)]
    ids = [_upload(client, f"note-{i}.txt", text.encode()) for i, text in enumerate(texts)]
    batch = client.vector_stores.file_batches.create(store.id, files=[
        {"file_id": file_id, "attributes": {"n": i}} for i, file_id in enumerate(ids)])
    cancelled = client.vector_stores.file_batches.cancel(batch.id, vector_store_id=store.id)
    counts = cancelled.file_counts
    assert cancelled.status == "cancelled" and counts.in_progress == 0 and counts.total == 6
    assert counts.cancelled + counts.completed == 6 and counts.cancelled >= 1
    time.sleep(3)  # a task that was running meets the new generation at its next batch and writes nothing more
    entries = {entry.id: entry for entry in client.vector_stores.files.list(store.id)}
    for file_id, entry in entries.items():
        chunks = Chunk.objects.filter(file__file_id=file_id.removeprefix("file-"), file__store_id=store.id[3:])
        assert chunks.exists() == (entry.status == "completed"), (entry.status, chunks.count())
    # A cancelled file added again is embedded (a retry), with its attributes.
    again = next(file_id for file_id, entry in entries.items() if entry.status == "cancelled")
    assert client.vector_stores.files.create(store.id, file_id=again).status == "in_progress"
    _settled(client, store.id)
    assert client.vector_stores.files.retrieve(again, vector_store_id=store.id).status == "completed"


def test_an_expired_store_says_so_and_refuses_searches(hub, library):
    from django.utils import timezone

    from apps.vectorstores.models import VectorStore

    client = library["client"]
    store = client.vector_stores.create(name="short-lived", expires_after={"anchor": "last_active_at", "days": 1})
    assert store.status == "completed" and store.expires_after.days == 1
    VectorStore.objects.filter(id=store.id[3:]).update(expires_at=timezone.now())
    assert client.vector_stores.retrieve(store.id).status == "expired"
    with pytest.raises(openai.BadRequestError) as exc_info:
        client.vector_stores.search(store.id, query="anything")
    assert _error(exc_info)["code"] == "vector_store_expired"


def test_the_admin_shows_progress_and_errors_and_re_embeds_a_store(hub, library):
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = library["client"]
    store = client.vector_stores.create(name="admin-view")
    good = _upload(client, "bread.txt", SOURDOUGH.encode())
    client.vector_stores.file_batches.create(store.id, file_ids=[good, _upload(client, "blank.pdf", empty_pdf())])
    _settled(client, store.id)
    admin = get_user_model().objects.create_superuser(username=f"admin-{store.id[-8:]}", password="x")
    browser = Client(SERVER_NAME="localhost")
    browser.force_login(admin)
    stores_page = browser.get("/admin/vectorstores/vectorstore/", {"q": "admin-view"}).content.decode()
    assert "admin-view" in stores_page and "1 / 2, 1 failed" in stores_page
    files_page = browser.get("/admin/vectorstores/vectorstorefile/", {"status__exact": "failed"}).content.decode()
    assert "blank.pdf" in files_page and "holds no text" in files_page
    pk = store.id.removeprefix("vs_")
    answer = browser.post("/admin/vectorstores/vectorstore/", {"action": "reembed", "_selected_action": [pk]},
                          follow=True)
    assert "2 file(s) of 1 store(s) queued" in answer.content.decode()
    store = _settled(client, store.id)
    assert (store.file_counts.completed, store.file_counts.failed) == (1, 1)
    assert client.vector_stores.search(store.id, query="bread").data[0].file_id == good
