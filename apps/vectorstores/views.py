"""/api/v1/vector_stores…: OpenAI's vector store API, so `client.vector_stores.*` of the official SDK works.

Thin, as every endpoint (docs/api.md): the serializer validates, a service or selector does the work,
bodies.py shapes the answer. Another user's store, file or batch is a 404 on every path.
"""
from __future__ import annotations

from rest_framework.response import Response

from apps.accounts.models import Scope
from apps.core.endpoints import Endpoint, list_of, operation

from . import serializers as s
from .bodies import batch_body, file_body, store_bodies, store_body
from .models import VectorStore, VectorStoreFile
from .search import vector_store_search
from .selectors import file_batch_get, page, vector_store_file_get, vector_store_get
from .services import (
    file_batch_cancel,
    file_batch_create,
    vector_store_create,
    vector_store_delete,
    vector_store_file_add,
    vector_store_file_delete,
    vector_store_file_update,
    vector_store_modify,
)

NOT_FOUND = "vector_store_not_found, file_not_found, not_found: not one of yours"
CURSOR_NOT_FOUND = "not_found (param after or before): no such object in this list"


class VectorStoreEndpoint(Endpoint):
    required_scope = Scope.INFERENCE


def _page_body(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": has_more}


def _cursor_rows(query: dict, find) -> dict:
    return {f"{name}_row": find(query[name], name) if query.get(name) else None for name in ("after", "before")}


class VectorStoreListView(VectorStoreEndpoint):
    @operation(operation_id="vector_stores_list", summary="Your vector stores (OpenAI)", query=s.ListQuerySerializer,
               responses=list_of(s.VectorStoreSerializer, "VectorStorePage"), errors={404: CURSOR_NOT_FOUND})
    def get(self, request, query):
        def find(store_id, param):
            return vector_store_get(user=request.user, store_id=store_id, param=param)
        rows, has_more = page(VectorStore.objects.filter(owner=request.user), order=query["order"],
                              limit=query["limit"], **_cursor_rows(query, find))
        return Response(_page_body(store_bodies(rows), has_more))

    @operation(operation_id="vector_stores_create", summary="Create a vector store (OpenAI)",
               request=s.VectorStoreCreateSerializer, responses={200: s.VectorStoreSerializer},
               errors={404: "model_not_found or file_not_found", 503: None})
    def post(self, request, data):
        store = vector_store_create(user=request.user, api_key=request.auth, data=data)
        return Response(store_body(store))  # OpenAI answers 200


class VectorStoreDetailView(VectorStoreEndpoint):
    @operation(operation_id="vector_stores_retrieve", summary="A vector store (OpenAI)",
               responses=s.VectorStoreSerializer, errors={404: NOT_FOUND})
    def get(self, request, store_id):
        return Response(store_body(vector_store_get(user=request.user, store_id=store_id)))

    @operation(operation_id="vector_stores_update", summary="Modify a vector store's name, metadata, expiry (OpenAI)",
               request=s.VectorStoreModifySerializer, responses=s.VectorStoreSerializer, errors={404: NOT_FOUND})
    def post(self, request, store_id, data):
        store = vector_store_modify(store=vector_store_get(user=request.user, store_id=store_id), data=data)
        return Response(store_body(store))

    @operation(operation_id="vector_stores_delete", summary="Delete a vector store and its chunks (OpenAI)",
               responses={200: s.DeletedSerializer}, errors={404: NOT_FOUND})
    def delete(self, request, store_id):
        store = vector_store_get(user=request.user, store_id=store_id)
        public_id = store.public_id
        vector_store_delete(store=store)
        return Response({"id": public_id, "object": "vector_store.deleted", "deleted": True})


class VectorStoreSearchView(VectorStoreEndpoint):
    @operation(operation_id="vector_stores_search", summary="Search a vector store (OpenAI)",
               request=s.SearchSerializer, responses=s.SearchPageSerializer,
               errors={404: NOT_FOUND, 409: "model_not_found: the store's model was removed", 503: None, 504: None})
    def post(self, request, store_id, data):
        ranking = data.get("ranking_options") or {}
        hits = vector_store_search(user=request.user, store_ids=[store_id], query=data["query"],
                                   max_num_results=data["max_num_results"],
                                   score_threshold=ranking.get("score_threshold", 0.0), filters=data.get("filters"))
        queries = [data["query"]] if isinstance(data["query"], str) else data["query"]
        return Response({"object": "vector_store.search_results.page", "search_query": queries,
                         "data": [hit.as_result() for hit in hits], "has_more": False, "next_page": None})


def _store_files(store, query: dict, batch=None):
    files = VectorStoreFile.objects.filter(store=store).select_related("file", "store")
    if batch is not None:
        files = files.filter(batch=batch)
    if query.get("filter"):
        files = files.filter(status=query["filter"])

    def find(file_id, param):
        return vector_store_file_get(store=store, file_id=file_id, param=param)
    rows, has_more = page(files, order=query["order"], limit=query["limit"], **_cursor_rows(query, find))
    return _page_body([file_body(row) for row in rows], has_more)


class VectorStoreFileListView(VectorStoreEndpoint):
    @operation(operation_id="vector_store_files_list", summary="The files of a vector store (OpenAI)",
               query=s.FileListQuerySerializer, responses=list_of(s.VectorStoreFileSerializer, "VectorStoreFilePage"),
               errors={404: f"{NOT_FOUND}, or {CURSOR_NOT_FOUND}"})
    def get(self, request, store_id, query):
        return Response(_store_files(vector_store_get(user=request.user, store_id=store_id), query))

    @operation(operation_id="vector_store_files_create", summary="Add a file of /files to a vector store (OpenAI)",
               request=s.FileCreateSerializer, responses={200: s.VectorStoreFileSerializer},
               errors={404: NOT_FOUND, 409: "model_not_found: the store's model was removed"})
    def post(self, request, store_id, data):
        store = vector_store_get(user=request.user, store_id=store_id)
        entry = vector_store_file_add(store=store, file_id=data["file_id"], attributes=data.get("attributes"),
                                      chunking_strategy=data.get("chunking_strategy"))
        return Response(file_body(entry))


class VectorStoreFileDetailView(VectorStoreEndpoint):
    def _entry(self, request, store_id, file_id):
        return vector_store_file_get(store=vector_store_get(user=request.user, store_id=store_id), file_id=file_id)

    @operation(operation_id="vector_store_files_retrieve", summary="A file of a vector store (OpenAI)",
               responses=s.VectorStoreFileSerializer, errors={404: NOT_FOUND})
    def get(self, request, store_id, file_id):
        return Response(file_body(self._entry(request, store_id, file_id)))

    @operation(operation_id="vector_store_files_update", summary="Replace a file's attributes (OpenAI)",
               request=s.FileUpdateSerializer, responses=s.VectorStoreFileSerializer, errors={404: NOT_FOUND})
    def post(self, request, store_id, file_id, data):
        entry = vector_store_file_update(entry=self._entry(request, store_id, file_id),
                                         attributes=data["attributes"] or {})
        return Response(file_body(entry))

    @operation(operation_id="vector_store_files_delete", summary="Take a file (and its chunks) out of a store (OpenAI)",
               responses={200: s.DeletedSerializer}, errors={404: NOT_FOUND})
    def delete(self, request, store_id, file_id):
        entry = self._entry(request, store_id, file_id)
        public_id = entry.public_id
        vector_store_file_delete(entry=entry)
        return Response({"id": public_id, "object": "vector_store.file.deleted", "deleted": True})


class FileBatchListView(VectorStoreEndpoint):
    @operation(operation_id="vector_store_file_batches_create", summary="Add several files at once (OpenAI)",
               request=s.FileBatchCreateSerializer, responses={200: s.FileBatchSerializer},
               errors={404: NOT_FOUND, 409: "model_not_found: the store's model was removed"})
    def post(self, request, store_id, data):
        batch = file_batch_create(store=vector_store_get(user=request.user, store_id=store_id), data=data)
        return Response(batch_body(batch))


class FileBatchDetailView(VectorStoreEndpoint):
    @operation(operation_id="vector_store_file_batches_retrieve", summary="A file batch (OpenAI)",
               responses=s.FileBatchSerializer, errors={404: NOT_FOUND})
    def get(self, request, store_id, batch_id):
        store = vector_store_get(user=request.user, store_id=store_id)
        return Response(batch_body(file_batch_get(store=store, batch_id=batch_id)))


class FileBatchCancelView(VectorStoreEndpoint):
    @operation(operation_id="vector_store_file_batches_cancel", summary="Cancel the files of a batch not yet done",
               responses=s.FileBatchSerializer, errors={404: NOT_FOUND})
    def post(self, request, store_id, batch_id):
        store = vector_store_get(user=request.user, store_id=store_id)
        return Response(batch_body(file_batch_cancel(batch=file_batch_get(store=store, batch_id=batch_id))))


class FileBatchFilesView(VectorStoreEndpoint):
    @operation(operation_id="vector_store_file_batches_files", summary="The files of a batch (OpenAI)",
               query=s.FileListQuerySerializer, responses=list_of(s.VectorStoreFileSerializer, "FileBatchFilePage"),
               errors={404: f"{NOT_FOUND}, or {CURSOR_NOT_FOUND}"})
    def get(self, request, store_id, batch_id, query):
        store = vector_store_get(user=request.user, store_id=store_id)
        return Response(_store_files(store, query, batch=file_batch_get(store=store, batch_id=batch_id)))
