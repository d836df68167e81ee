"""POST /embeddings: route a job to the worker that owns the model, wait for its vectors, shape the answer.

No torch and no tokenizer here: the web bounds characters and counts, the worker
tokenizes and refuses an input longer than the model takes (workers/embeddings.py).
"""
from __future__ import annotations

import base64
import math
import sys
import time
from array import array

from django.conf import settings

from apps.accounts.limits import limits_admit, limits_settle
from apps.catalog.job_lists import job_list_send
from apps.catalog.models import ModelEntry
from apps.catalog.selectors import model_check_use, model_get
from apps.core.errors import AppError
from apps.core.worker_commands import reply_wait, reply_wait_sync
from apps.monitoring.counters import usage_record

from .jobs import SHARED_QUEUE, EmbeddingJob, worker_queue


def embedding_model_get(*, user, api_key, model_id: str | None) -> ModelEntry:
    """The embedding model the request names (or the default): 404 if the user may not see it, 400 if not one."""
    entry = model_get(user=user, key=api_key, model_id=model_id or settings.AIHUB_DEFAULT_EMBEDDING_MODEL)
    model_check_use(entry=entry, use="embeddings")
    return entry


def _check_dimensions(entry: ModelEntry, dimensions: int | None) -> None:
    # The model's own size is always accepted: clients that always send `dimensions` keep working.
    if dimensions is None or dimensions == entry.embedding_dimensions:
        return
    if not entry.supports_dimensions:
        raise AppError(f"The model '{entry.id}' returns {entry.embedding_dimensions} dimensions and was not trained "
                       "for truncation; it does not take `dimensions`.", param="dimensions",
                       code="unsupported_parameter")
    if dimensions > entry.embedding_dimensions:
        raise AppError(f"dimensions: the model '{entry.id}' returns at most {entry.embedding_dimensions}.",
                       param="dimensions", code="invalid_value")


def _estimated_tokens(inputs: list, tokens: bool) -> int:
    # About four characters per token; settled against the worker's exact count.
    return sum(len(i) if tokens else math.ceil(len(i) / 4) for i in inputs)


def embedding_job_send(job: EmbeddingJob, *, entry: ModelEntry) -> None:
    """Push a job onto the list of the worker that holds (or will hold) its model; 503 when that list is full."""
    job_list_send(entry=entry, message=job.dumps(), shared_queue=SHARED_QUEUE, worker_queue=worker_queue,
                  max_waiting=settings.AIHUB_EMBEDDING_MAX_QUEUE, kind="embedding")


def embeddings_submit(*, user, api_key, data: dict, truncate: bool = False) -> tuple[EmbeddingJob, dict, ModelEntry]:
    """Check the request, take its share of the key's limits and queue it for the worker holding the model.

    `data` is validated EmbeddingRequestSerializer output. Returns the job, the limits reservation (settle it
    with `embeddings_settle` however the request ends) and the model. `truncate` (internal callers only, never
    the API) cuts a text longer than the model takes instead of refusing it.
    """
    entry = embedding_model_get(user=user, api_key=api_key, model_id=data.get("model"))
    _check_dimensions(entry, data.get("dimensions"))
    inputs, tokens = data["input"]["inputs"], data["input"]["tokens"]
    dimensions = data.get("dimensions")
    job = EmbeddingJob(model=entry.id, inputs=inputs, tokens=tokens, truncate=truncate,
                       expires_at=time.time() + settings.AIHUB_REQUEST_TIMEOUT_SECONDS,
                       dimensions=None if dimensions == entry.embedding_dimensions else dimensions)
    reservation = limits_admit(key=api_key, request_id=job.id, cost=_estimated_tokens(inputs, tokens))
    try:
        embedding_job_send(job, entry=entry)
    except BaseException:
        limits_settle(reservation, used_tokens=0)
        raise
    return job, reservation, entry


def texts_embed(*, entry: ModelEntry, texts: list[str], truncate: bool = False) -> tuple[list[bytes], int]:
    """Blocking: the vectors of `texts` (little-endian float32 bytes each, in order) and the tokens they took.

    For work with no API key of its own to charge (so no key limits; counted in /metrics): vector store
    ingestion and search (apps/vectorstores), message embeddings for conversation search
    (apps/chat/message_embeddings.py). Waits AIHUB_REQUEST_TIMEOUT_SECONDS at most; errors are raised as
    AppError (the worker's refusal, 503 queue_full, 504 timeout). Callers keep their batches within
    AIHUB_EMBEDDING_MAX_INPUTS. `truncate` cuts a text longer than the model takes instead of refusing it.
    """
    job = EmbeddingJob(model=entry.id, inputs=texts, truncate=truncate,
                       expires_at=time.time() + settings.AIHUB_REQUEST_TIMEOUT_SECONDS)
    embedding_job_send(job, entry=entry)
    reply = reply_wait_sync(job.id, timeout=settings.AIHUB_REQUEST_TIMEOUT_SECONDS)
    usage_record(request_id=job.id, model_id=job.model, state="succeeded", prompt_tokens=reply["prompt_tokens"])
    return embedding_vectors(job=job, reply=reply), reply["prompt_tokens"]


async def embeddings_wait(job: EmbeddingJob, *, timeout: float | None = None) -> dict:
    """The worker's answer: {"embeddings": base64 float32, "dimensions", "prompt_tokens"}, or its error raised
    (a 504 `timeout` after `timeout` seconds, AIHUB_REQUEST_TIMEOUT_SECONDS unless given)."""
    # The reply half of a worker command (apps/core/worker_commands.py); the job itself is not sent as one.
    return await reply_wait(job.id, timeout=timeout or settings.AIHUB_REQUEST_TIMEOUT_SECONDS)


def embeddings_settle(*, job: EmbeddingJob, reservation: dict, prompt_tokens: int, succeeded: bool) -> None:
    """Give the concurrency slot back, charge the tokens really used, count the request for /metrics."""
    limits_settle(reservation, used_tokens=prompt_tokens)
    usage_record(request_id=job.id, model_id=job.model, state="succeeded" if succeeded else "failed",
                 prompt_tokens=prompt_tokens)


def embeddings_body(*, job: EmbeddingJob, reply: dict, encoding_format: str) -> dict:
    """OpenAI's `list` of `embedding` objects, in input order. The worker sends little-endian float32, which
    `base64` passes on per vector as OpenAI does, and `float` turns into numbers."""
    vectors = embedding_vectors(job=job, reply=reply)
    if encoding_format == "base64":
        values = [base64.b64encode(vector).decode("ascii") for vector in vectors]
    else:
        values = [embedding_floats(vector) for vector in vectors]
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": index, "embedding": value} for index, value in enumerate(values)],
        "model": job.model,
        "usage": {"prompt_tokens": reply["prompt_tokens"], "total_tokens": reply["prompt_tokens"]},
    }


def embedding_vectors(*, job: EmbeddingJob, reply: dict) -> list[bytes]:
    """The worker's answer cut into one little-endian float32 vector per input, in input order."""
    raw = base64.b64decode(reply["embeddings"])
    width = reply["dimensions"] * 4
    return [raw[i * width:(i + 1) * width] for i in range(len(job.inputs))]


def embedding_floats(vector: bytes) -> list[float]:
    """One vector of the worker's answer as numbers."""
    values = array("f")
    values.frombytes(vector)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()
