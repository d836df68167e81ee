"""Reads of vector stores: one user's objects only (another user's is a 404), pages and counts."""
from __future__ import annotations

import uuid

from django.db.models import Count, Q, Sum

from apps.core.errors import NotFoundError
from apps.training.selectors import parse_public_id

from .models import Chunk, VectorStore, VectorStoreFile, VectorStoreFileBatch

FILE_STATUSES = [status.value for status in VectorStoreFile.Status]


def _uuid(raw: str, prefix: str) -> uuid.UUID | None:
    text = str(raw)
    if text.startswith(prefix + "_"):
        text = text[len(prefix) + 1:]
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def vector_store_get(*, user, store_id: str, param: str = "vector_store_id") -> VectorStore:
    pk = _uuid(store_id, "vs")
    store = VectorStore.objects.filter(owner=user, id=pk).first() if pk else None
    if store is None:
        raise NotFoundError(f"No vector store with id '{store_id}'.", param=param, code="vector_store_not_found")
    return store


def vector_store_file_get(*, store: VectorStore, file_id: str, param: str = "file_id") -> VectorStoreFile:
    pk = parse_public_id(file_id, "file")
    entry = store.files.select_related("file").filter(file_id=pk).first() if pk else None
    if entry is None:
        raise NotFoundError(f"No file '{file_id}' in the vector store {store.public_id}.", param=param,
                            code="file_not_found")
    return entry


def file_batch_get(*, store: VectorStore, batch_id: str) -> VectorStoreFileBatch:
    pk = _uuid(batch_id, "vsfb")
    batch = store.file_batches.filter(id=pk).first() if pk else None
    if batch is None:
        raise NotFoundError(f"No file batch '{batch_id}' in the vector store {store.public_id}.", param="batch_id",
                            code="not_found")
    return batch


def file_counts(files) -> dict[str, int]:
    """OpenAI's file_counts over a queryset of VectorStoreFile rows."""
    counts = files.aggregate(total=Count("id"), **{status: Count("id", filter=Q(status=status))
                                                   for status in FILE_STATUSES})
    return {"in_progress": counts["in_progress"], "completed": counts["completed"], "failed": counts["failed"],
            "cancelled": counts["cancelled"], "total": counts["total"]}


def store_counts(stores: list[VectorStore]) -> dict:
    """{store id: (file_counts, usage_bytes)} for a page of stores, in one grouped query."""
    rows = VectorStoreFile.objects.filter(store__in=stores).values("store_id").annotate(
        total=Count("id"), usage=Sum("usage_bytes"),
        **{status: Count("id", filter=Q(status=status)) for status in FILE_STATUSES})
    out = {store.id: ({"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0}, 0)
           for store in stores}
    for row in rows:
        out[row["store_id"]] = ({status: row[status] for status in FILE_STATUSES} | {"total": row["total"]},
                                row["usage"] or 0)
    return out


def chunk_count(*, store: VectorStore) -> int:
    return Chunk.objects.filter(store=store).count()


def _beyond(queryset, row, *, older: bool):
    if older:
        return queryset.filter(Q(created_at__lt=row.created_at) | Q(created_at=row.created_at, id__lt=row.id))
    return queryset.filter(Q(created_at__gt=row.created_at) | Q(created_at=row.created_at, id__gt=row.id))


def page(queryset, *, after_row, before_row, order: str, limit: int) -> tuple[list, bool]:
    """OpenAI's cursor page over rows in (created_at, id) order: the `limit` rows right after `after_row`
    (or right before `before_row`, still listed in `order`); has_more says whether more lie that way."""
    descending = order == "desc"
    if after_row is not None:
        queryset = _beyond(queryset, after_row, older=descending)
    if before_row is not None:
        queryset = _beyond(queryset, before_row, older=not descending)
    forward = ("-created_at", "-id") if descending else ("created_at", "id")
    if before_row is not None and after_row is None:
        # The rows nearest the cursor: walk back from it, then list them in the asked order.
        backward = tuple(name[1:] if name.startswith("-") else f"-{name}" for name in forward)
        rows = list(queryset.order_by(*backward)[:limit + 1])
        return list(reversed(rows[:limit])), len(rows) > limit
    rows = list(queryset.order_by(*forward)[:limit + 1])
    return rows[:limit], len(rows) > limit
