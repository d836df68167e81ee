"""Message embeddings for conversation search, computed in the background as messages are stored.

When: every service that stores messages calls `message_embeddings_schedule(conversation_id=…)` (a chat
completion when its request ends: answered, failed or cancelled, so its user turn and answer take one task).
Once the transaction commits, a task on the `default` queue (celeryconfig.EMBED_MESSAGES_TASK) embeds every
searched message of that conversation (SEARCHED_ROLES, not empty) that has no vector of the current model yet.

Idempotent: the task takes a conversation id, not messages, and looks up what is missing when it runs, so a
redelivered message, or two completions of one conversation in a row, find little or nothing left to do; and
the unique (message, model, passage) constraint makes a race of two tasks insert each vector once. A task
that fails (no worker answered) leaves its messages without vectors: the next message stored in the
conversation, or `manage.py embedmessages`, embeds them. Until then the search finds them by their words.

How: through the path of POST /embeddings (apps/embeddings/services.py), as jobs of many passages to the
worker that holds the model. A message longer than one passage is cut at whitespace into passages of about
PASSAGE_CHARS characters, each embedded alone (a message matches by its best passage); the worker cuts a
passage that is still longer than the model takes (`truncate`) instead of refusing the whole job.
"""
from __future__ import annotations

import hashlib
import logging

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from psycopg import sql

import celeryconfig
from apps.accounts.models import Profile
from apps.catalog.models import ModelEntry
from apps.core.publishing import enqueue_on_commit
from apps.embeddings.services import embedding_floats, texts_embed

from .models import SEARCHED_ROLES, Conversation, Message, MessageEmbedding

logger = logging.getLogger(__name__)

# A passage is a few sentences (about 100 tokens of English): all-MiniLM-L6-v2 was trained on sentence pairs,
# and one matching sentence among many unrelated ones barely moves a long passage's mean vector (measured:
# a sentence's similarity to a paraphrase fell from 0.44 alone to 0.25 inside 1,000 characters of other text).
# A message gets at most MAX_PASSAGES (about 25,000 characters); the full-text index reads far more of it.
PASSAGE_CHARS = 400
MAX_PASSAGES = 64
_SENTENCE_ENDS = (". ", "! ", "? ", "\n")
BATCH_INPUTS = 128  # passages per embedding job: one round trip, batched on the worker with other jobs


def conversation_embeddings_enabled() -> bool:
    return settings.AIHUB_CONVERSATION_EMBEDDINGS


def user_embeddings_enabled(*, user_id) -> bool:
    """The user's own choice (PATCH /me `conversation_embeddings`); on unless they turned it off."""
    return not Profile.objects.filter(user_id=user_id, conversation_embeddings=False).exists()


def conversation_embeddings_set(*, user, enabled: bool) -> None:
    """A user's opt-out (or back in). Out: their vectors are deleted at once, and none are made any more.
    Back in: their conversations are embedded again in the background."""
    with transaction.atomic():
        Profile.objects.update_or_create(user=user, defaults={"conversation_embeddings": enabled})
        if not enabled:
            MessageEmbedding.objects.filter(user=user).delete()
            return
        for conversation_id in user.conversations.values_list("id", flat=True):
            message_embeddings_schedule(conversation_id=conversation_id)


def conversation_embedding_model() -> ModelEntry | None:
    """The model that embeds messages and search queries; None when it is not in the catalog (not yet imported)."""
    return ModelEntry.objects.filter(id=settings.AIHUB_CONVERSATION_EMBEDDING_MODEL, enabled=True,
                                     kind="embedding").first()


def message_embeddings_schedule(*, conversation_id) -> None:
    """After the current transaction commits, embed the conversation's messages that have no vector yet."""
    if conversation_id is not None and conversation_embeddings_enabled():
        enqueue_on_commit(celeryconfig.EMBED_MESSAGES_TASK, args=[str(conversation_id)])


def passages(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of at most PASSAGE_CHARS, cut after a sentence where one ends, else at a
    space (text without either, such as a long token, is cut where it must)."""
    spans: list[tuple[int, int]] = []
    start, size = 0, len(text)
    while len(spans) < MAX_PASSAGES:
        while start < size and text[start].isspace():
            start += 1
        if start >= size:
            break
        end = min(start + PASSAGE_CHARS, size)
        if end < size:
            # The last sentence end in the window's second half, else the last space, else a hard cut.
            lower = start + PASSAGE_CHARS // 2
            sentence = max(text.rfind(mark, lower, end) for mark in _SENTENCE_ENDS)
            space = max(text.rfind(mark, lower, end) for mark in " \t")
            end = sentence + 1 if sentence > 0 else space if space > 0 else end
        spans.append((start, end))
        start = end
    return spans


def message_embeddings_update(*, conversation_id) -> int:
    """Embed the conversation's searched messages that lack a vector of the current model; returns how many
    passages were stored. The task's body (workers/tasks.py)."""
    if not conversation_embeddings_enabled():
        return 0
    entry = conversation_embedding_model()
    if entry is None:
        logger.warning("conversation embeddings: the model '%s' is not in the catalog; messages are searched "
                       "by their words only", settings.AIHUB_CONVERSATION_EMBEDDING_MODEL)
        return 0
    owner = Conversation.objects.filter(id=conversation_id).values_list("user_id", flat=True).first()
    if owner is None or not user_embeddings_enabled(user_id=owner):
        return 0
    pending = (Message.objects.filter(conversation_id=conversation_id, role__in=SEARCHED_ROLES)
               .exclude(content="").exclude(embeddings__model=entry.id)
               .values_list("id", "content"))
    rows, texts = [], []
    for message_id, content in pending:
        for index, (start, end) in enumerate(passages(content)):
            rows.append(MessageEmbedding(message_id=message_id, user_id=owner, model=entry.id, passage=index,
                                         start=start, end=end))
            texts.append(content[start:end])
    for first in range(0, len(rows), BATCH_INPUTS):
        batch = rows[first:first + BATCH_INPUTS]
        vectors = [embedding_floats(vector) for vector in
                   texts_embed(entry=entry, texts=texts[first:first + BATCH_INPUTS], truncate=True)[0]]
        for row, vector in zip(batch, vectors):
            row.embedding = vector
        if not user_embeddings_enabled(user_id=owner):
            return 0  # they opted out while the worker was embedding: what was stored is deleted, add none
        _store(batch)
    if rows:
        hnsw_index_ensure(entry)
    return len(rows)


def _store(rows: list[MessageEmbedding]) -> None:
    try:
        with transaction.atomic():
            MessageEmbedding.objects.bulk_create(rows, ignore_conflicts=True)
    except IntegrityError:
        # A message deleted (with its conversation) while it was being embedded: keep the others' vectors.
        alive = set(Message.objects.filter(id__in={row.message_id for row in rows}).values_list("id", flat=True))
        MessageEmbedding.objects.bulk_create([row for row in rows if row.message_id in alive], ignore_conflicts=True)


def hnsw_index_name(entry: ModelEntry) -> str:
    return f"chat_msgemb_hnsw_{hashlib.sha1(entry.id.encode()).hexdigest()[:12]}"


_indexed: set[str] = set()  # indexes this process has seen exist


def hnsw_index_ensure(entry: ModelEntry) -> None:
    """Create the model's partial HNSW index (cosine) once, over its vectors cast to its size.

    One index per model, because an HNSW index needs one vector size and the column takes any (pgvector's
    answer for several sizes in one column: an expression and a partial index). A search states the same
    cast and the same `model =` condition, so the planner uses it. CONCURRENTLY: messages keep being stored
    while a large table is indexed. An advisory lock keeps two default workers from building it together.
    """
    name = hnsw_index_name(entry)
    if name in _indexed:
        return
    lock = int(hashlib.sha1(name.encode()).hexdigest()[:15], 16)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [lock])
        if not cursor.fetchone()[0]:
            return  # another worker is building it
        try:
            statement = sql.SQL(
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON chat_messageembedding "
                "USING hnsw ((embedding::vector({dimensions})) vector_cosine_ops) WHERE model = {model}").format(
                name=sql.Identifier(name), dimensions=sql.Literal(int(entry.embedding_dimensions)),
                model=sql.Literal(entry.id))
            cursor.execute(statement.as_string(connection.connection))
            _indexed.add(name)
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock])


def message_embeddings_backfill(*, prune: bool = False, progress=None) -> tuple[int, int, int]:
    """Embed every conversation's missing messages (`manage.py embedmessages`); with `prune`, delete the
    vectors of other models. Returns (conversations, passages embedded, vectors deleted)."""
    if not conversation_embeddings_enabled():
        raise RuntimeError("AIHUB_CONVERSATION_EMBEDDINGS is off: nothing is embedded.")
    entry = conversation_embedding_model()
    if entry is None:
        raise RuntimeError(f"The model '{settings.AIHUB_CONVERSATION_EMBEDDING_MODEL}' is not in the catalog "
                           "(manage.py importmodel).")
    pruned = MessageEmbedding.objects.exclude(model=entry.id).delete()[0] if prune else 0
    conversation_ids = list(Message.objects.filter(role__in=SEARCHED_ROLES).exclude(content="")
                            .exclude(embeddings__model=entry.id).values_list("conversation_id", flat=True)
                            .distinct())
    passages_stored = 0
    for done, conversation_id in enumerate(conversation_ids, start=1):
        passages_stored += message_embeddings_update(conversation_id=conversation_id)
        if progress and (done % 100 == 0 or done == len(conversation_ids)):
            progress(done, len(conversation_ids))
    return len(conversation_ids), passages_stored, pruned
