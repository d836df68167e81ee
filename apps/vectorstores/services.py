"""Writes of vector stores: stores, their files and file batches, attributes, cancel and re-embed.

Embedding happens in the background: adding a file writes its row `in_progress` and, once the
transaction commits, publishes the ingestion task to the `default` (CPU) queue with the row's
generation (ingestion.py says how a redelivered or outdated message is made harmless).
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

import celeryconfig
from apps.catalog.models import ModelEntry
from apps.core.errors import AppError
from apps.core.publishing import enqueue_on_commit
from apps.embeddings.services import embedding_model_get
from apps.training.models import TrainingFile
from apps.training.selectors import training_file_get

from .chunking import strategy_resolve
from .models import Chunk, VectorStore, VectorStoreFile, VectorStoreFileBatch

# The purposes of /files that a store takes (OpenAI's): fine-tuning datasets are not documents.
DOCUMENT_PURPOSES = ("assistants", "user_data")
Status = VectorStoreFile.Status


def _model_max_tokens(entry: ModelEntry) -> int:
    # The worker refuses an input longer than context_length minus the model's special tokens (two for
    # BERT-like models); the chunker counts the exact number on the worker (chunking.special_token_count).
    return max(1, entry.context_length - 2)


def _check_strategy(chunking_strategy: dict | None, entry: ModelEntry, param: str) -> dict:
    strategy = strategy_resolve(chunking_strategy, model_max_tokens=_model_max_tokens(entry))
    if strategy.max_tokens > _model_max_tokens(entry):
        raise AppError(f"{param}.static.max_chunk_size_tokens: {strategy.max_tokens} tokens is more than the "
                       f"store's embedding model '{entry.id}' takes per input ({_model_max_tokens(entry)}).",
                       param=f"{param}.static.max_chunk_size_tokens", code="invalid_value")
    return strategy.as_json()


def _expiry(expires_after: dict | None, *, now) -> tuple[dict | None, object]:
    if not expires_after:
        return None, None
    return expires_after, now + timedelta(days=expires_after["days"])


@transaction.atomic
def vector_store_create(*, user, api_key, data: dict) -> VectorStore:
    """`data`: validated VectorStoreCreateSerializer output. Files named in `file_ids` are added at once."""
    entry = embedding_model_get(user=user, api_key=api_key, model_id=data.get("embedding_model"))
    if not entry.embedding_dimensions:
        raise AppError(f"The model '{entry.id}' does not say its embedding size.", param="embedding_model",
                       code="model_not_supported")
    strategy = _check_strategy(data.get("chunking_strategy"), entry, "chunking_strategy")
    now = timezone.now()
    expires_after, expires_at = _expiry(data.get("expires_after"), now=now)
    store = VectorStore.objects.create(
        owner=user, name=data.get("name") or "", metadata=data.get("metadata") or {}, embedding_model=entry.id,
        dimensions=entry.embedding_dimensions, chunking_strategy=strategy, expires_after=expires_after,
        expires_at=expires_at, last_active_at=now)
    for file_id in data.get("file_ids") or []:
        vector_store_file_add(store=store, file_id=file_id, param="file_ids")
    return store


def vector_store_modify(*, store: VectorStore, data: dict) -> VectorStore:
    fields = []
    if "name" in data:
        store.name, fields = data["name"] or "", fields + ["name"]
    if "metadata" in data:
        store.metadata, fields = data["metadata"] or {}, fields + ["metadata"]
    if "expires_after" in data:
        store.expires_after, store.expires_at = _expiry(data["expires_after"], now=timezone.now())
        fields += ["expires_after", "expires_at"]
    if fields:
        store.save(update_fields=fields)
    return store


def vector_store_delete(*, store: VectorStore) -> None:
    """The store, its file entries and chunks (a cascade); the uploaded files stay in /files, as OpenAI's."""
    store.delete()


def vector_store_touch(store: VectorStore) -> None:
    """A search makes the store active: `last_active_at`, and the expiry it anchors, move on."""
    now = timezone.now()
    expires_at = now + timedelta(days=store.expires_after["days"]) if store.expires_after else None
    VectorStore.objects.filter(id=store.id).update(last_active_at=now, expires_at=expires_at)


def vector_store_expired(store: VectorStore) -> bool:
    return store.expires_at is not None and store.expires_at <= timezone.now()


def _document_get(*, store: VectorStore, file_id: str, param: str) -> TrainingFile:
    document = training_file_get(user=store.owner, file_id=file_id, param=param)
    if document.purpose not in DOCUMENT_PURPOSES:
        raise AppError(f"The file '{file_id}' was uploaded with purpose '{document.purpose}'; a vector store takes "
                       f"files of purpose {' or '.join(DOCUMENT_PURPOSES)}.", param=param, code="invalid_value")
    return document


def _queue(entry: VectorStoreFile) -> None:
    enqueue_on_commit(celeryconfig.INGEST_VECTOR_STORE_FILE_TASK, args=[str(entry.id), entry.generation])


@transaction.atomic
def vector_store_file_add(*, store: VectorStore, file_id: str, attributes: dict | None = None,
                          chunking_strategy: dict | None = None, batch: VectorStoreFileBatch | None = None,
                          param: str = "file_id") -> VectorStoreFile:
    """Add an uploaded file to a store and queue its embedding.

    Adding a file the store already holds returns that entry, re-queued if it had failed or was cancelled
    (with the new attributes and strategy when given), as a retry.
    """
    if vector_store_expired(store):
        raise AppError(f"The vector store {store.public_id} has expired.", param="vector_store_id",
                       code="vector_store_expired")
    document = _document_get(store=store, file_id=file_id, param=param)
    entry_model = ModelEntry.objects.filter(id=store.embedding_model).first()
    if entry_model is None:
        raise AppError(f"The store's embedding model '{store.embedding_model}' was removed; nothing can be added "
                       "until the store is re-embedded with another model.", status=409, code="model_not_found")
    strategy = (_check_strategy(chunking_strategy, entry_model, "chunking_strategy") if chunking_strategy
                else store.chunking_strategy)
    existing = VectorStoreFile.objects.select_for_update().filter(store=store, file=document).first()
    if existing is not None:
        if existing.status in (Status.FAILED, Status.CANCELLED):
            existing.status, existing.last_error, existing.batch = Status.IN_PROGRESS, None, batch
            existing.generation, existing.attempts, existing.chunking_strategy = existing.generation + 1, 0, strategy
            if attributes is not None:
                existing.attributes = attributes
            existing.save()
            _queue(existing)
        return existing
    entry = VectorStoreFile.objects.create(store=store, file=document, batch=batch, chunking_strategy=strategy,
                                           attributes=attributes or {})
    _queue(entry)
    return entry


@transaction.atomic
def vector_store_file_update(*, entry: VectorStoreFile, attributes: dict) -> VectorStoreFile:
    """New attributes for the file and, in the same transaction, for its chunks (which filters read)."""
    entry.attributes = attributes
    entry.save(update_fields=["attributes"])
    Chunk.objects.filter(file=entry).update(attributes=attributes)
    return entry


def vector_store_file_delete(*, entry: VectorStoreFile) -> None:
    """Out of the store, chunks included (a cascade); a running ingestion finds the row gone and stops.
    The uploaded file stays in /files, as OpenAI's."""
    entry.delete()


@transaction.atomic
def file_batch_create(*, store: VectorStore, data: dict) -> VectorStoreFileBatch:
    """`data`: validated FileBatchCreateSerializer output: `file_ids` sharing `attributes` and
    `chunking_strategy`, or `files`, each with its own."""
    batch = VectorStoreFileBatch.objects.create(store=store)
    items = data.get("files") or [{"file_id": file_id} for file_id in data.get("file_ids") or []]
    for index, item in enumerate(items):
        param = f"files.{index}.file_id" if data.get("files") else f"file_ids.{index}"
        vector_store_file_add(store=store, file_id=item["file_id"], batch=batch, param=param,
                              attributes=item.get("attributes", data.get("attributes")),
                              chunking_strategy=item.get("chunking_strategy") or data.get("chunking_strategy"))
    return batch


def _files_cancel(files) -> int:
    """in_progress -> cancelled by compare-and-set (a new generation: a running task stops at its next
    batch), and the chunks written so far go."""
    with transaction.atomic():
        ids = list(files.filter(status=Status.IN_PROGRESS).select_for_update().values_list("id", flat=True))
        VectorStoreFile.objects.filter(id__in=ids, status=Status.IN_PROGRESS).update(
            status=Status.CANCELLED, generation=F("generation") + 1)
        Chunk.objects.filter(file_id__in=ids).delete()
    return len(ids)


def file_batch_cancel(*, batch: VectorStoreFileBatch) -> VectorStoreFileBatch:
    """OpenAI's cancel: the batch's files not yet embedded are cancelled; the ones done stay."""
    VectorStoreFileBatch.objects.filter(id=batch.id).update(cancelled=True)
    _files_cancel(VectorStoreFile.objects.filter(batch=batch))
    batch.refresh_from_db()
    return batch


@transaction.atomic
def vector_store_reembed(*, store: VectorStore, model_id: str | None = None) -> int:
    """Embed every file of the store again, with `model_id` (default: AIHUB_DEFAULT_EMBEDDING_MODEL).

    For the admin action, when a store's model changes. The store records the new model at once; each
    file goes back to in_progress (searches skip it until it is done, so a search never mixes models),
    and its old chunks go when its task starts. Progress is the store's file_counts. Returns the files queued.
    """
    entry = ModelEntry.objects.get(id=model_id or settings.AIHUB_DEFAULT_EMBEDDING_MODEL)
    store = VectorStore.objects.select_for_update().get(id=store.id)
    store.embedding_model, store.dimensions = entry.id, entry.embedding_dimensions
    store.save(update_fields=["embedding_model", "dimensions"])
    files = list(store.files.select_for_update())
    max_tokens = _model_max_tokens(entry)
    for file in files:
        strategy = file.chunking_strategy
        if strategy["static"]["max_chunk_size_tokens"] > max_tokens:  # the new model takes less: shrink to fit
            strategy = strategy_resolve(None, model_max_tokens=max_tokens).as_json()
        VectorStoreFile.objects.filter(id=file.id).update(
            status=Status.IN_PROGRESS, last_error=None, attempts=0, generation=F("generation") + 1,
            chunking_strategy=strategy)
        file.refresh_from_db()
        _queue(file)
    return len(files)
