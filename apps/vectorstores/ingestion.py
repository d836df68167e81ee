"""Embedding one file of a store, on the `default` (CPU) queue: read, chunk, embed in batches, write.

Exactly one set of chunks per file, however often the message is delivered:
- the task carries the row's `generation`; a re-embed, a cancel or a retry bumps it, so a message
  from before finds another generation (or no row: the file was deleted) and does nothing;
- a claim counts the attempt by compare-and-set on (id, generation, in_progress); a redelivery after
  a worker died counts again, and beyond AIHUB_TASK_MAX_ATTEMPTS the file fails instead of looping;
- every attempt first deletes the chunks a lost attempt left, then writes its own batch by batch,
  each batch in a transaction that locks the row and checks it is still this generation, in progress;
- the end is one more compare-and-set: in_progress -> completed (or failed with `last_error`).
Searches only read files that are `completed`, so a half-written file is never seen.

The vectors come from the inference worker that owns the model, through the same job path as
POST /embeddings (apps/embeddings/services.texts_embed); this task never loads a model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import F

from apps.catalog.models import ModelEntry
from apps.core.errors import AppError
from apps.embeddings.services import texts_embed

from .chunking import ExtractionError, Piece, Strategy, extract_text, special_token_count, split, tokenizer_for
from .indexes import ensure_hnsw_index
from .models import Chunk, VectorStoreFile

logger = logging.getLogger(__name__)
Status = VectorStoreFile.Status


class Superseded(Exception):
    """The row was deleted, cancelled or re-queued meanwhile: this attempt stops and writes nothing more."""


def _current(entry_id, generation: int):
    return VectorStoreFile.objects.filter(id=entry_id, generation=generation, status=Status.IN_PROGRESS)


def _fail(entry: VectorStoreFile, *, code: str, message: str) -> None:
    with transaction.atomic():
        if _current(entry.id, entry.generation).update(status=Status.FAILED,
                                                       last_error={"code": code, "message": message[:1000]}):
            Chunk.objects.filter(file_id=entry.id).delete()


def vector_store_file_ingest(entry_id: str, generation: int) -> None:
    if not _current(entry_id, generation).update(attempts=F("attempts") + 1):
        return  # deleted, cancelled, done, or re-queued under a newer generation
    entry = VectorStoreFile.objects.select_related("store", "file").get(id=entry_id)
    if entry.attempts > settings.AIHUB_TASK_MAX_ATTEMPTS:
        _fail(entry, code="server_error", message=f"Embedding was started {entry.attempts - 1} times without "
                                                  "finishing (its worker was lost each time); not tried again.")
        return
    Chunk.objects.filter(file_id=entry.id).delete()  # what a lost attempt left
    try:
        _ingest(entry)
    except Superseded:
        logger.info("vector store file %s changed while it was embedded; stopped", entry_id)
    except ExtractionError as exc:
        _fail(entry, code=exc.code, message=str(exc))
    except AppError as exc:
        _fail(entry, code=exc.code or "server_error", message=exc.message)
    except Exception as exc:  # noqa: BLE001 - the file must end failed with a reason, never stay in_progress
        logger.exception("embedding vector store file %s failed", entry_id)
        _fail(entry, code="server_error", message=f"{type(exc).__name__}: {exc}")


def _ingest(entry: VectorStoreFile) -> None:
    store = entry.store
    model = ModelEntry.objects.filter(id=store.embedding_model, enabled=True).first()
    if model is None:
        raise AppError(f"The store's embedding model '{store.embedding_model}' is not in the catalog.",
                       code="model_not_found")
    text = extract_text(Path(entry.file.path), entry.file.filename)
    tokenizer = tokenizer_for(model.path)
    strategy = Strategy.from_json(entry.chunking_strategy)
    allowed = model.context_length - special_token_count(tokenizer)
    if strategy.max_tokens > allowed:
        raise AppError(f"Chunks of {strategy.max_tokens} tokens are more than the model '{model.id}' takes "
                       f"({allowed}).", code="invalid_value")
    pieces = split(text, tokenizer, strategy)
    ensure_hnsw_index(store.dimensions)  # before the first chunk of this size; outside any transaction
    written, usage = 0, 0
    batch = settings.AIHUB_VECTOR_STORE_EMBED_BATCH
    for start in range(0, len(pieces), batch):
        group = pieces[start:start + batch]
        vectors = _embed_patiently(model, [piece.text for piece in group])
        usage += _write(entry, store.dimensions, start, group, vectors)
        written += len(group)
    with transaction.atomic():
        if not _current(entry.id, entry.generation).update(status=Status.COMPLETED, usage_bytes=usage,
                                                           chunk_count=written, last_error=None):
            raise Superseded()


def _embed_patiently(model: ModelEntry, texts: list[str]) -> list[bytes]:
    """texts_embed, waiting while the embedding queue is full: background work yields to interactive
    requests (a client's POST /embeddings gets the 503; this task waits its turn), up to the request timeout."""
    deadline = time.monotonic() + settings.AIHUB_REQUEST_TIMEOUT_SECONDS
    while True:
        try:
            return texts_embed(entry=model, texts=texts)[0]
        except AppError as exc:
            if exc.code != "queue_full" or time.monotonic() > deadline:
                raise
            time.sleep(exc.retry_after or 1)


def _write(entry: VectorStoreFile, dims: int, start: int, pieces: list[Piece], vectors: list[bytes]) -> int:
    """One batch of chunks, written only while the row is still this attempt's; returns the bytes it takes.

    The row is locked while the batch is written, so an attributes update (which updates the chunks
    written so far under the same lock) and this batch see the same attributes.
    """
    arrays = [np.frombuffer(raw, dtype="<f4") for raw in vectors]
    if any(vector.shape[0] != dims for vector in arrays):
        raise AppError(f"The model returned vectors of another size than the store's {dims}.", code="server_error")
    with transaction.atomic():
        row = _current(entry.id, entry.generation).select_for_update().values("attributes").first()
        if row is None:
            raise Superseded()
        Chunk.objects.bulk_create([
            Chunk(store_id=entry.store_id, file_id=entry.id, index=start + offset, text=piece.text,
                  tokens=piece.tokens, attributes=row["attributes"], dims=dims, embedding=vector)
            for offset, (piece, vector) in enumerate(zip(pieces, arrays, strict=True))])
    return sum(len(piece.text.encode()) + 4 * dims for piece in pieces)
