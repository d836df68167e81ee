"""Conversation search: the caller's own messages, by meaning and by words, fused by reciprocal rank.

Two rankers, each over the caller's messages only (SEARCHED_ROLES):
- `semantic`: the query's embedding against the messages' passage vectors of the same model
  (apps/chat/message_embeddings.py), nearest first by cosine through the model's HNSW index; a message
  ranks by its best passage, and one below AIHUB_CONVERSATION_SEARCH_MIN_SIMILARITY is no match;
- `text`: PostgreSQL full-text search, `websearch_to_tsquery` (quotes, `or`, `-word`) against the GIN
  expression index of models.message_search_vector, ranked by `ts_rank_cd`.

Reciprocal rank fusion (Cormack, Clarke and Büttcher, SIGIR 2009): a message's score is the sum, over the
rankers that found it, of 1 / (RRF_K + its rank there), ranks counted from 1. It needs no calibration between
a cosine and a ts_rank, and a message both rankers found comes before one found by a single ranker at the
same ranks. Each ranker gives its best AIHUB_CONVERSATION_SEARCH_CANDIDATES messages; the fused list is paged
with `offset` and `limit`, so pages of the same query over the same messages never overlap or skip.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import F, Func, TextField, Value
from django.db.models.functions import Left

from apps.catalog.models import ModelEntry
from apps.core.db import release_database_connection
from apps.core.errors import AppError
from apps.embeddings.services import (
    embedding_floats,
    embedding_vectors,
    embeddings_settle,
    embeddings_submit,
    embeddings_wait,
)

from .message_embeddings import conversation_embedding_model, conversation_embeddings_enabled, user_embeddings_enabled
from .models import SEARCH_CONFIG, SEARCH_MAX_CHARS, SEARCHED_ROLES, Message, message_search_vector

logger = logging.getLogger(__name__)

RRF_K = 60  # the constant of the paper, which also found it robust; larger flattens the top ranks' lead
SEMANTIC, TEXT = "semantic", "text"
SEMANTIC_UNAVAILABLE = "semantic_search_unavailable"
# Highlight markers for ts_headline: private-use characters, removed from the text first, so that the
# snippet can be returned as plain text with the highlighted ranges beside it (no markup to escape).
_START, _STOP = "\ue000", "\ue001"


@dataclass
class Hit:
    message_id: int
    score: float = 0.0
    rankers: list[str] = field(default_factory=list)
    passage: tuple[int, int] | None = None  # the best semantic passage's span, for the snippet


def semantic_ranking(*, user, model_id: str, dimensions: int, vector: list[float], depth: int) -> list[Hit]:
    """The user's messages nearest to `vector` among the vectors of `model_id`, best first."""
    dimensions = int(dimensions)  # a type modifier cannot be a query parameter
    cast = f"embedding::vector({dimensions})"
    # Passages, not messages, come out of the index: take more, then keep each message's best.
    passages_wanted = depth * 2
    with transaction.atomic(), connection.cursor() as cursor:
        # The user filter is applied inside the index scan; an iterative scan goes on past ef_search
        # candidates until enough of this user's passages are found (pgvector >= 0.8), so a user with
        # few messages among many users' still gets their nearest ones.
        cursor.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
        cursor.execute(f"SET LOCAL hnsw.ef_search = {max(40, min(passages_wanted, 1000))}")
        cursor.execute(
            f"SELECT message_id, start, \"end\", {cast} <=> %s::vector({dimensions}) AS distance "
            f"FROM chat_messageembedding WHERE user_id = %s AND model = %s "
            f"ORDER BY {cast} <=> %s::vector({dimensions}) LIMIT %s",
            [_vector_literal(vector), user.id, model_id, _vector_literal(vector), passages_wanted])
        rows = cursor.fetchall()
    best: dict[int, tuple[float, tuple[int, int]]] = {}
    for message_id, start, end, distance in rows:
        if message_id not in best or distance < best[message_id][0]:
            best[message_id] = (distance, (start, end))
    floor = 1.0 - settings.AIHUB_CONVERSATION_SEARCH_MIN_SIMILARITY  # cosine distance = 1 - similarity
    ranked = sorted((distance, -message_id, span) for message_id, (distance, span) in best.items()
                    if distance <= floor)
    return [Hit(-negative_id, passage=span) for _, negative_id, span in ranked[:depth]]


def _vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(value)) for value in vector) + "]"


def _text_query(q: str) -> SearchQuery:
    return SearchQuery(q, search_type="websearch", config=SEARCH_CONFIG)


def text_ranking(*, user, q: str, depth: int) -> list[Hit]:
    """The user's messages that hold the query's words, best first (ts_rank_cd, then newest)."""
    query = _text_query(q)
    ids = (Message.objects.filter(conversation__user=user, role__in=SEARCHED_ROLES)
           .annotate(document=message_search_vector()).filter(document=query)
           .annotate(rank=SearchRank(F("document"), query, cover_density=True))
           .order_by("-rank", "-id").values_list("id", flat=True)[:depth])
    return [Hit(message_id) for message_id in ids]


def fuse(rankings: dict[str, list[Hit]]) -> list[Hit]:
    """Reciprocal rank fusion of the rankers' lists: highest score first, then the newest message."""
    fused: dict[int, Hit] = {}
    for ranker, hits in rankings.items():
        for rank, hit in enumerate(hits, start=1):
            entry = fused.setdefault(hit.message_id, Hit(hit.message_id))
            entry.score += 1.0 / (RRF_K + rank)
            entry.rankers.append(ranker)
            entry.passage = entry.passage or hit.passage
    return sorted(fused.values(), key=lambda hit: (-hit.score, -hit.message_id))


def conversation_search(*, user, q: str, mode: str, vector: list[float] | None, entry: ModelEntry | None,
                        limit: int, offset: int) -> tuple[list[dict], bool, list[str]]:
    """One page of the fused results (dicts for the output serializer), whether more follow, and the rankers
    that ran: `text` unless the mode is semantic, `semantic` when the query has a vector (of `entry`)."""
    depth = settings.AIHUB_CONVERSATION_SEARCH_CANDIDATES
    rankings = {}
    if mode != SEMANTIC:
        rankings[TEXT] = text_ranking(user=user, q=q, depth=depth)
    if vector is not None:
        rankings[SEMANTIC] = semantic_ranking(user=user, model_id=entry.id, dimensions=entry.embedding_dimensions,
                                              vector=vector, depth=depth)
    fused = fuse(rankings)
    page = fused[offset:offset + limit]
    return _results(page, q=q), offset + len(page) < len(fused), sorted(rankings)


async def conversation_search_answer(*, user, api_key, query: dict) -> dict:
    """GET /chat/conversations/search: embed the query (unless `text`), rank, fuse, page.

    `hybrid` falls back to words alone when the query cannot be embedded: embeddings are off, the model
    is not in the catalog, or the worker failed or timed out (`rankers` then lacks `semantic`). A refusal
    the caller can act on (their key's limits) is returned as it is, and `semantic` alone never falls back.
    """
    vector, entry = None, None
    if query["mode"] != TEXT:
        try:
            vector, entry = await _query_embedding(user=user, api_key=api_key, q=query["q"])
        except AppError as error:
            if query["mode"] == SEMANTIC or (error.status < 500 and error.code != SEMANTIC_UNAVAILABLE):
                raise
            logger.warning("conversation search without its semantic ranker: %s", error.message)
    results, has_more, rankers = await sync_to_async(conversation_search)(
        user=user, q=query["q"], mode=query["mode"], vector=vector, entry=entry, limit=query["limit"],
        offset=query["offset"])
    return {"object": "list", "data": results, "has_more": has_more, "rankers": rankers}


async def _query_embedding(*, user, api_key, q: str) -> tuple[list[float], ModelEntry]:
    """The query's vector by the model that embeds messages, through the embeddings path (the key's limits
    apply, as to POST /embeddings); a query longer than the model takes is cut, not refused."""
    if not await sync_to_async(user_embeddings_enabled)(user_id=user.id):
        raise AppError("Semantic search is off for your account (PATCH /me conversation_embeddings); use mode "
                       "`text` or `hybrid`.", param="mode", code=SEMANTIC_UNAVAILABLE)
    entry = await sync_to_async(conversation_embedding_model)() if conversation_embeddings_enabled() else None
    if entry is None:
        raise AppError("Semantic search is not available on this hub: conversation embeddings are off "
                       "(AIHUB_CONVERSATION_EMBEDDINGS) or their model is not installed; use mode `text` or "
                       "`hybrid`.", param="mode", code=SEMANTIC_UNAVAILABLE)
    job, reservation, _ = await sync_to_async(embeddings_submit)(
        user=user, api_key=api_key, data={"input": {"inputs": [q], "tokens": False}, "model": entry.id},
        truncate=True)
    reply = None
    try:
        await release_database_connection()
        reply = await embeddings_wait(job, timeout=settings.AIHUB_CONVERSATION_SEARCH_EMBED_TIMEOUT_SECONDS)
    finally:
        await sync_to_async(embeddings_settle)(job=job, reservation=reservation, succeeded=reply is not None,
                                               prompt_tokens=reply["prompt_tokens"] if reply else 0)
    return embedding_floats(embedding_vectors(job=job, reply=reply)[0]), entry


def _results(page: list[Hit], *, q: str) -> list[dict]:
    # Cleaned of the marker characters before ts_headline adds its own.
    text = _WithoutMarkers(Left("content", SEARCH_MAX_CHARS))
    messages = (Message.objects.filter(id__in=[hit.message_id for hit in page])
                .select_related("conversation")
                .annotate(headline=SearchHeadline(text, _text_query(q), config=SEARCH_CONFIG, start_sel=_START,
                                                  stop_sel=_STOP, max_words=35, min_words=15, max_fragments=2,
                                                  fragment_delimiter=" … ")))
    by_id = {message.id: message for message in messages}
    results = []
    for hit in page:
        message = by_id.get(hit.message_id)
        if message is None:
            continue  # deleted since it was ranked
        if TEXT in hit.rankers or hit.passage is None:
            snippet, highlights = _unmark(message.headline)
        else:
            snippet, highlights = _passage_snippet(message.content, hit.passage), []
        results.append({"conversation_id": message.conversation_id, "conversation_title": message.conversation.title,
                        "message_id": message.id, "role": message.role, "snippet": snippet,
                        "highlights": highlights, "created_at": message.created_at, "score": hit.score,
                        "rankers": sorted(hit.rankers)})
    return results


def _unmark(headline: str) -> tuple[str, list[list[int]]]:
    """ts_headline's text without its markers, and the [start, end) character ranges they enclosed."""
    plain, highlights, start = [], [], None
    length = 0
    for char in headline:
        if char == _START:
            start = length
        elif char == _STOP:
            if start is not None:
                highlights.append([start, length])
            start = None
        else:
            plain.append(char)
            length += 1
    return "".join(plain), highlights


def _passage_snippet(content: str, span: tuple[int, int]) -> str:
    """The passage that matched by meaning (at most PASSAGE_CHARS), its whitespace folded."""
    return " ".join(content[span[0]:span[1]].split())


class _WithoutMarkers(Func):
    """translate(text, markers, ''): the text without the highlight marker characters."""

    function = "translate"
    output_field = TextField()

    def __init__(self, expression):
        super().__init__(expression, Value(_START + _STOP), Value(""))
