"""Retrieval in chat: the request's `retrieval` extension searches the caller's vector stores with the last user
message and puts the chunks found into the prompt (docs/vector_stores.md, "Retrieval in chat").

    "retrieval": {"vector_store_ids": ["vs_..."], "max_num_results": 4, "score_threshold": 0.2, "filters": {...}}

Two steps, on the web, before the request is enqueued:
- `retrieval_search` (blocking: it waits for the embedding worker) runs outside the request's transaction, so no
  database transaction is held open while the query is embedded; async callers reach it through sync_to_async
  (the chat view, the websocket and the Responses API all submit from a request thread);
- `retrieval_prompt`, inside chat_completion_create once the model is known, fits the chunks into the model's
  context: the best-scored ones that fit after the messages and max_tokens are kept, the lowest-scored ones that
  do not are dropped, and the user's own messages are never shortened.
The search itself is the vector stores' one service (apps/vectorstores/search.vector_store_search).
"""
from __future__ import annotations

import math

from rest_framework import serializers

from apps.core.errors import AppError
from apps.core.fields import StrictFloatField, StrictIntegerField
from apps.vectorstores.search import MAX_RESULTS, Hit, vector_store_search
from apps.vectorstores.serializers import FiltersField

MAX_STORES = 16
DEFAULT_RESULTS = 4
# The web has no tokenizer of the chat model (the worker owns it), so the context budget is an estimate; three
# characters a token is on the safe side of English text for the BPE tokenizers of chat models (the limits'
# estimate uses four): a block that fits by this count fits the worker's exact count of it.
CHARS_PER_TOKEN = 3
# What the model is told, before the chunks; documented in docs/vector_stores.md.
INSTRUCTION = ("Answer the user's question using the documents below when they are relevant. "
               "They are excerpts of the user's files, found by searching for the question; "
               "if they do not contain the answer, say so.")
DOCUMENT = '<document index="{index}" file="{filename}">\n{text}\n</document>'


class RetrievalSerializer(serializers.Serializer):
    """The chat request's `retrieval` extension (unknown keys are refused by name, as everywhere)."""

    vector_store_ids = serializers.ListField(
        child=serializers.CharField(max_length=64), min_length=1, max_length=MAX_STORES,
        help_text="Your vector stores to search (another user's is 404).")
    max_num_results = StrictIntegerField(required=False, default=DEFAULT_RESULTS, min_value=1, max_value=MAX_RESULTS,
                                         help_text="At most this many chunks are put into the prompt.")
    score_threshold = StrictFloatField(required=False, default=0.0, min_value=0.0, max_value=1.0,
                                       help_text="Chunks scoring less (cosine similarity) are left out.")
    filters = FiltersField(required=False, allow_null=True, help_text="Attribute filters, as in the search.")


def retrieval_query(messages: list[dict], *, param: str = "retrieval") -> str:
    """What is searched: the text of the request's last user message."""
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            return message["content"]
    raise AppError("Retrieval searches with the last user message, and the request has none with text.",
                   param=param, code="invalid_value")


def retrieval_search(*, user, spec: dict, messages: list[dict], param: str = "retrieval") -> tuple[str, list[Hit]]:
    """(query, hits) for a validated `retrieval` spec. Blocking; errors name `param` (a 404 for a store that is
    not the user's, the embedding worker's 503/504)."""
    query = retrieval_query(messages, param=param)
    try:
        hits = vector_store_search(user=user, store_ids=spec["vector_store_ids"], query=query,
                                   max_num_results=spec.get("max_num_results") or DEFAULT_RESULTS,
                                   score_threshold=spec.get("score_threshold") or 0.0, filters=spec.get("filters"))
    except AppError as error:
        if error.param in ("vector_store_id", "vector_store_ids"):
            error.param = f"{param}.vector_store_ids"
        elif error.param and not error.param.startswith(param):
            error.param = f"{param}.{error.param}"
        raise
    return query, hits


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def retrieval_block(hits: list[Hit]) -> str:
    """The system-side context block the model sees."""
    documents = "\n".join(DOCUMENT.format(index=index, filename=hit.filename, text=hit.text)
                          for index, hit in enumerate(hits, start=1))
    return f"{INSTRUCTION}\n\n<documents>\n{documents}\n</documents>"


def retrieval_prompt(prompt: list[dict], *, hits: list[Hit], budget_tokens: int) -> tuple[list[dict], list[Hit]]:
    """`prompt` with the block of the best hits that fit in `budget_tokens` (estimated), and the hits used.

    The block joins the first system message (many chat templates take only one, and only first), or becomes a
    new one in front (also when that message has media parts, whose text is rendered from its parts). Hits come
    best first; the lowest-scored are dropped until the block fits.
    """
    used = list(hits)
    while used and estimate_tokens(retrieval_block(used)) + 8 > budget_tokens:
        used.pop()
    if not used:
        return prompt, []
    block = retrieval_block(used)
    prompt = [dict(message) for message in prompt]
    if prompt and prompt[0]["role"] == "system" and not prompt[0].get("parts"):
        prompt[0]["content"] = f"{prompt[0]['content']}\n\n{block}" if prompt[0]["content"] else block
    else:
        prompt.insert(0, {"role": "system", "content": block})
    return prompt, used


def prompt_budget(prompt: list[dict], *, context_length: int, max_tokens: int) -> int:
    """Tokens left for the block after the messages (and their template's few tokens each) and the answer."""
    return context_length - max_tokens - sum(estimate_tokens(m["content"]) + 8 for m in prompt)


def retrieval_record(*, query: str, spec: dict, hits: list[Hit], used: list[Hit]) -> dict:
    """What is stored with the request and its answer (params["retrieval"], Message.retrieval) and shown to the
    client: which chunks the model saw. `text` is kept for the Responses API's file_search results."""
    return {"query": query, "vector_store_ids": list(spec["vector_store_ids"]), "found": len(hits),
            "chunks": [{"vector_store_id": hit.vector_store_id, "file_id": hit.file_id, "filename": hit.filename,
                        "chunk_index": hit.chunk_index, "chunk_id": hit.chunk_id, "score": hit.score,
                        "attributes": hit.attributes, "text": hit.text} for hit in used]}


def retrieval_public(record: dict | None) -> dict | None:
    """The record as the API shows it (chat's `retrieval`, a message's): the chunks without their text."""
    if not record:
        return None
    return {**record, "chunks": [{key: value for key, value in chunk.items() if key != "text"}
                                 for chunk in record["chunks"]]}
