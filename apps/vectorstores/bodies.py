"""The objects /vector_stores answers with, in OpenAI's shapes (serializers.py declares them for the schema)."""
from __future__ import annotations

from .models import VectorStore, VectorStoreFile, VectorStoreFileBatch
from .selectors import file_counts, store_counts
from .services import vector_store_expired


def _ts(value) -> int | None:
    return int(value.timestamp()) if value else None


def store_bodies(stores: list[VectorStore]) -> list[dict]:
    counts = store_counts(stores)
    out = []
    for store in stores:
        files, usage = counts[store.id]
        status = "expired" if vector_store_expired(store) else "in_progress" if files["in_progress"] else "completed"
        out.append({
            "id": store.public_id, "object": "vector_store", "created_at": _ts(store.created_at),
            "name": store.name, "usage_bytes": usage, "file_counts": files, "status": status,
            "expires_after": store.expires_after, "expires_at": _ts(store.expires_at),
            "last_active_at": _ts(store.last_active_at), "metadata": store.metadata,
            "embedding_model": store.embedding_model, "dimensions": store.dimensions,
            "chunking_strategy": store.chunking_strategy,
        })
    return out


def store_body(store: VectorStore) -> dict:
    return store_bodies([store])[0]


def file_body(entry: VectorStoreFile) -> dict:
    return {"id": entry.public_id, "object": "vector_store.file", "created_at": _ts(entry.created_at),
            "vector_store_id": entry.store.public_id, "status": entry.status, "last_error": entry.last_error,
            "usage_bytes": entry.usage_bytes, "chunking_strategy": entry.chunking_strategy,
            "attributes": entry.attributes}


def batch_body(batch: VectorStoreFileBatch) -> dict:
    counts = file_counts(batch.files.all())
    if counts["in_progress"]:
        status = "in_progress"
    elif batch.cancelled:
        status = "cancelled"
    elif counts["failed"] and not counts["completed"]:
        status = "failed"
    else:
        status = "completed"
    return {"id": batch.public_id, "object": "vector_store.file_batch", "created_at": _ts(batch.created_at),
            "vector_store_id": batch.store.public_id, "status": status, "file_counts": counts}
