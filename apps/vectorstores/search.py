"""Search in vector stores: the one service that every caller uses (the search endpoint, and retrieval in
chat or the Responses `file_search` tool on top of it).

    hits = vector_store_search(user=user, store_ids=["vs_..."], query="how do I reset it?",
                               max_num_results=10, score_threshold=0.0, filters=None)

- Ownership first: every id must name one of `user`'s stores, else a 404 naming it; the SQL is then
  restricted to those stores and to their `completed` files, so no chunk of another user's store, nor
  of a file still being embedded, can ever come back.
- The query is embedded with each store's own model (stores of different models are searched each
  with their vectors, and the hits merged by score), through the same job path as POST /embeddings.
- Each search is an HNSW cosine scan of the partial index of the store's dimension (indexes.py), with
  `hnsw.ef_search` = max(AIHUB_VECTOR_STORE_EF_SEARCH, 2 x max_num_results) and pgvector's iterative
  scan (`relaxed_order`), which keeps reading the index until enough rows pass the store and attribute
  filters (without it a filter that keeps 1 chunk in 1,000 would return nothing); the rows are then
  sorted exactly by distance.
- `score` is the cosine similarity (1 - cosine distance), from -1 to 1; 1 is the same direction.
Blocking (it waits for the embedding worker): from async code call it with `sync_to_async`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from django.conf import settings
from django.db import connection, transaction

from apps.catalog.models import ModelEntry
from apps.core.errors import AppError
from apps.embeddings.services import texts_embed
from apps.training.models import TrainingFile

from .filters import filters_check, filters_sql
from .models import VectorStore, VectorStoreFile
from .selectors import vector_store_get
from .services import vector_store_expired, vector_store_touch

MAX_RESULTS = 50


@dataclass
class Hit:
    """One chunk found: what OpenAI's search result shows, plus where it lies."""

    vector_store_id: str
    file_id: str
    filename: str
    score: float
    text: str
    attributes: dict = field(default_factory=dict)
    chunk_index: int = 0
    chunk_id: int = 0

    def as_result(self) -> dict:
        """OpenAI's `vector_store.search_result`."""
        return {"file_id": self.file_id, "filename": self.filename, "score": self.score,
                "attributes": self.attributes, "content": [{"type": "text", "text": self.text}]}


def vector_store_search(*, user, store_ids: list[str], query: str | list[str], max_num_results: int = 10,
                        score_threshold: float = 0.0, filters: dict | None = None) -> list[Hit]:
    """The best chunks of `user`'s stores for `query`, best first: at most `max_num_results` (1 to 50), none
    scoring below `score_threshold`, each passing `filters` (OpenAI's attribute filters, filters.py).

    Raises AppError: 404 for a store that is not the user's, 400 for bad arguments or an expired store,
    and the embedding worker's errors (503 queue_full, 504 timeout).
    """
    queries = [query] if isinstance(query, str) else list(query)
    if not queries or not all(isinstance(text, str) and text.strip() for text in queries):
        raise AppError("query: must be a non-empty string or a list of them.", param="query", code="invalid_value")
    if not 1 <= max_num_results <= MAX_RESULTS:
        raise AppError(f"max_num_results: must be between 1 and {MAX_RESULTS}.", param="max_num_results",
                       code="invalid_value")
    if filters is not None:
        filters_check(filters)
    stores = _owned_stores(user, store_ids)
    by_model: dict[tuple[str, int], list[VectorStore]] = {}
    for store in stores:
        by_model.setdefault((store.embedding_model, store.dimensions), []).append(store)
    best: dict[int, Hit] = {}
    for (model_id, dims), group in by_model.items():
        for hit in _search_group(model_id, dims, group, queries, max_num_results, score_threshold, filters):
            if hit.chunk_id not in best or hit.score > best[hit.chunk_id].score:
                best[hit.chunk_id] = hit
    for store in stores:
        vector_store_touch(store)
    return sorted(best.values(), key=lambda hit: -hit.score)[:max_num_results]


def _owned_stores(user, store_ids: list[str]) -> list[VectorStore]:
    if not store_ids:
        raise AppError("vector_store_ids: name at least one vector store.", param="vector_store_ids",
                       code="invalid_value")
    stores = {}
    for store_id in store_ids:
        store = vector_store_get(user=user, store_id=store_id)
        if vector_store_expired(store):
            raise AppError(f"The vector store {store.public_id} has expired.", param="vector_store_id",
                           code="vector_store_expired")
        stores[store.id] = store
    return list(stores.values())


def _search_group(model_id: str, dims: int, stores: list[VectorStore], queries: list[str], limit: int,
                  threshold: float, filters: dict | None) -> list[Hit]:
    files = dict(VectorStoreFile.objects.filter(store__in=stores, status=VectorStoreFile.Status.COMPLETED)
                 .values_list("id", "file_id"))
    if not files:
        return []
    model = ModelEntry.objects.filter(id=model_id, enabled=True).first()
    if model is None:
        raise AppError(f"The embedding model '{model_id}' of the vector store is no longer in the catalog; an "
                       "administrator can re-embed the store with another model.", status=409,
                       code="model_not_found")
    try:
        vectors, _ = texts_embed(entry=model, texts=queries)
    except AppError as error:
        if error.param == "input":  # the worker's name for it (a query longer than the model takes)
            error.param, error.message = "query", error.message.replace("input", "query", 1)
        raise
    found = []
    for raw in vectors:
        found += chunks_nearest(dims=dims, store_ids=[store.id for store in stores], file_ids=list(files),
                                vector=np.frombuffer(raw, dtype="<f4"), limit=limit, threshold=threshold,
                                filters=filters)
    names = dict(TrainingFile.objects.filter(id__in=set(files.values())).values_list("id", "filename"))
    public = {store.id: store.public_id for store in stores}
    return [Hit(vector_store_id=public[store_id], file_id=f"file-{files[file_id].hex}",
                filename=names.get(files[file_id], ""), score=float(score), text=text,
                attributes=json.loads(attributes) if isinstance(attributes, str) else attributes,
                chunk_index=index, chunk_id=chunk_id)
            for chunk_id, store_id, file_id, index, text, attributes, score in found]


def chunks_nearest(*, dims: int, store_ids: list, file_ids: list, vector: np.ndarray, limit: int,
                   threshold: float = -1.0, filters: dict | None = None) -> list[tuple]:
    """The SQL half of a search: the `limit` chunks of these stores and files nearest `vector`, nearest first,
    as (chunk id, store id, file row id, index, text, attributes, score) rows. bench/embeddings.py times it."""
    sql, params = nearest_sql(dims=dims, store_ids=store_ids, file_ids=file_ids, vector=vector, limit=limit,
                              threshold=threshold, filters=filters)
    with transaction.atomic(), connection.cursor() as cursor:
        search_settings(cursor, limit)
        cursor.execute(sql, params)
        return cursor.fetchall()


def search_settings(cursor, limit: int) -> None:
    """HNSW's candidate list and iterative scan for this transaction: set_config(..., true) is SET LOCAL, so
    they end with it and never leak to the next user of the pooled connection."""
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true), "
                   "set_config('hnsw.iterative_scan', 'relaxed_order', true)",
                   [str(max(settings.AIHUB_VECTOR_STORE_EF_SEARCH, 2 * limit))])


def nearest_sql(*, dims: int, store_ids: list, file_ids: list, vector: np.ndarray, limit: int,
                threshold: float = -1.0, filters: dict | None = None) -> tuple[str, list]:
    # dims as a literal: the planner must see `dims = N` to prove the partial index's predicate.
    where, params = f"c.dims = {int(dims)} AND c.store_id = ANY(%s) AND c.file_id = ANY(%s)", [store_ids, file_ids]
    if filters is not None:
        condition, condition_params = filters_sql(filters)
        where, params = f"{where} AND {condition}", params + condition_params
    literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
    cast = f"::vector({int(dims)})"  # the very expression of the partial index (indexes.py), or it is not used
    sql = (f"SELECT id, store_id, file_id, idx, text, attributes, 1 - distance FROM ("
           f"  SELECT c.id, c.store_id, c.file_id, c.index AS idx, c.text, c.attributes,"
           f"         c.embedding{cast} <=> %s{cast} AS distance"
           f"  FROM vectorstores_chunk c WHERE {where}"
           f"  ORDER BY c.embedding{cast} <=> %s{cast} LIMIT %s"
           f") found WHERE 1 - distance >= %s ORDER BY distance")  # relaxed_order: sorted exactly here
    return sql, [literal, *params, literal, limit, threshold]
