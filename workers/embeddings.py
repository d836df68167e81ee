"""The inference worker's embedding threads: many inputs, of many requests, per forward pass.

Each thread (workers/job_threads.py) pops a job from this worker's list (then the
shared one), takes every other job already waiting, and serves them model by model: tokenize, refuse the
jobs with an input longer than the model takes, sort all remaining inputs by
length and cut them into forward passes of at most AIHUB_EMBEDDING_MAX_BATCH_TOKENS
padded tokens (similar lengths pad little), pool each row as the catalog entry
says, normalise, and answer each job through its event log. The web side and the
reasons for a queue of our own are in apps/embeddings/jobs.py and docs/queues.md.

Models come from the worker's ModelManager like chat models do (same budget, LRU,
keep-alive, /models/status); a forward pass holds the model's lock, as the chat
engine's passes do, so an adapter change or an unload never runs under it.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from django.conf import settings

from apps.catalog.models import ModelEntry, Pooling
from apps.core.errors import error_object
from apps.core.worker_commands import reply_done, reply_error
from apps.embeddings.jobs import SHARED_QUEUE, EmbeddingJob, worker_queue

from .compute_threads import with_team
from .engine import LoadedModel
from .job_threads import JobThreads
from .model_manager import InsufficientMemory, ModelSpec

logger = logging.getLogger(__name__)


class JobRefused(Exception):
    def __init__(self, error: dict):
        super().__init__(error["message"])
        self.error = error


@dataclass
class Pooled:
    """How an entry turns token vectors into one vector."""

    pooling: str
    normalize: bool

    @classmethod
    def from_entry(cls, entry: ModelEntry) -> "Pooled":
        return cls(entry.pooling or Pooling.MEAN, entry.normalize_embeddings)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
    marker = "hello"
    bare = tokenizer(marker, add_special_tokens=False)["input_ids"]
    framed = tokenizer(marker, add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(bare) + 1):
        if framed[start:start + len(bare)] == bare:
            return framed[:start], framed[start + len(bare):]
    return [], []


def encode_inputs(loaded: LoadedModel, job: EmbeddingJob) -> list[list[int]]:
    """Each input as the model's token ids with its special tokens; refuses the job if one is too long."""
    tokenizer = loaded.tokenizer
    prefix, suffix = special_tokens(tokenizer)
    if job.tokens:
        vocabulary = len(tokenizer)
        for index, ids in enumerate(job.inputs):
            if any(token >= vocabulary for token in ids):
                raise JobRefused(error_object(
                    f"input {index} holds a token id beyond the vocabulary of the model '{job.model}' "
                    f"({vocabulary} tokens).", type="invalid_request_error", param="input", code="invalid_value"))
        texts_ids = job.inputs
    else:
        texts_ids = tokenizer(job.inputs, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    allowed = loaded.context_length - len(prefix) - len(suffix)
    if job.truncate:
        texts_ids = [ids[:allowed] for ids in texts_ids]
    for index, ids in enumerate(texts_ids):
        if len(ids) > allowed:
            # OpenAI refuses rather than truncates: a silently shortened input embeds something else.
            raise JobRefused(error_object(
                f"input {index} has {len(ids)} tokens; the model '{job.model}' takes at most {allowed} per input.",
                type="invalid_request_error", param="input", code="context_length_exceeded"))
    return [prefix + list(ids) + suffix for ids in texts_ids]


def forward_passes(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of the inputs per pass: longest first, each pass's padded size (rows x longest) within the bound.

    An input longer than the bound alone still gets a pass of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    passes, current = [], []
    for index in order:
        if current and lengths[current[0]] * (len(current) + 1) > max_batch_tokens:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooled: Pooled) -> torch.Tensor:
    """One vector per row, in float32, as sentence-transformers' Pooling (and Normalize) modules compute it."""
    hidden = hidden.float()
    if pooled.pooling == Pooling.CLS:
        vectors = hidden[:, 0]
    elif pooled.pooling == Pooling.LAST:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        vectors = hidden[rows, mask.sum(1) - 1]  # padding is on the right
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return F.normalize(vectors, p=2, dim=1) if pooled.normalize else vectors


def embed(loaded: LoadedModel, sequences: list[list[int]], pooled: Pooled, *, max_batch_tokens: int) -> torch.Tensor:
    """The embeddings of token sequences (with special tokens), in their order, as a float32 CPU tensor."""
    pad = loaded.tokenizer.pad_token_id or 0
    out = [None] * len(sequences)
    for indices in forward_passes([len(s) for s in sequences], max_batch_tokens):
        width = len(sequences[indices[0]])
        ids = torch.full((len(indices), width), pad, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, index in enumerate(indices):
            ids[row, :len(sequences[index])] = torch.tensor(sequences[index])
            mask[row, :len(sequences[index])] = 1
        with loaded.lock, torch.inference_mode():
            ids, mask = ids.to(loaded.device), mask.to(loaded.device)
            hidden = loaded.model(input_ids=ids, attention_mask=mask).last_hidden_state
            vectors = pool(hidden, mask, pooled).cpu()
        for row, index in enumerate(indices):
            out[index] = vectors[row]
    return torch.stack(out)


def answer(job: EmbeddingJob, vectors: torch.Tensor, pooled: Pooled, prompt_tokens: int) -> None:
    if job.dimensions:
        # Matryoshka truncation: the leading dimensions, normalised again (the catalog allowed it).
        vectors = vectors[:, :job.dimensions]
        if pooled.normalize:
            vectors = F.normalize(vectors, p=2, dim=1)
    raw = vectors.contiguous().to(torch.float32).numpy().astype("<f4").tobytes()
    reply_done(job.id, embeddings=base64.b64encode(raw).decode("ascii"), dimensions=vectors.shape[1],
               prompt_tokens=prompt_tokens)


def refuse(job: EmbeddingJob, error: dict) -> None:
    reply_error(job.id, error)


class EmbeddingService:
    """The embedding threads of one inference worker process."""

    def __init__(self, manager, *, nodename: str, max_batch_tokens: int, max_jobs: int = 64):
        self.manager = manager
        self.queues = [worker_queue(nodename), SHARED_QUEUE]  # its own first: routing sent those here
        self.max_batch_tokens = max_batch_tokens
        self.max_jobs = max_jobs

    def start(self, threads: int) -> list[threading.Thread]:
        # Each take holds every job already waiting (up to max_jobs): their inputs share forward passes.
        return JobThreads("embeddings", queues=self.queues, loads=EmbeddingJob.loads, serve=self.serve,
                          max_jobs=self.max_jobs).start(threads)

    def serve(self, jobs: list[EmbeddingJob]) -> None:
        by_model: dict[str, list[EmbeddingJob]] = {}
        for job in jobs:
            by_model.setdefault(job.model, []).append(job)
        for model_id, model_jobs in by_model.items():
            try:
                self.serve_model(model_id, model_jobs)
            except Exception:  # noqa: BLE001 - every job must get an answer, not the web's timeout
                logger.exception("embedding %d job(s) of %s failed", len(model_jobs), model_id)
                for job in model_jobs:
                    refuse(job, error_object("The embedding failed on the worker; see the worker log.",
                                             type="server_error", code="embedding_failed"))

    def serve_model(self, model_id: str, jobs: list[EmbeddingJob]) -> None:
        entry = ModelEntry.objects.filter(id=model_id, enabled=True).first()
        if entry is None:
            for job in jobs:
                refuse(job, error_object(f"The model '{model_id}' was removed.", param="model",
                                         code="model_not_found"))
            return
        pooled = Pooled.from_entry(entry)
        tic = time.perf_counter()
        try:
            with self.manager.use(ModelSpec.from_entry(entry)) as loaded:
                accepted, sequences = [], []
                # A fast tokenizer is not safe to call from two threads at once ("Already borrowed").
                with loaded.lock:
                    specials = sum(len(part) for part in special_tokens(loaded.tokenizer))
                    for job in jobs:
                        try:
                            encoded = encode_inputs(loaded, job)
                        except JobRefused as exc:
                            refuse(job, exc.error)
                            continue
                        accepted.append((job, len(sequences), len(encoded)))
                        sequences += encoded
                if not sequences:
                    return
                # With a team of threads of its own, for this batch only (workers/compute_threads.py).
                vectors = with_team(lambda: embed(loaded, sequences, pooled, max_batch_tokens=self.max_batch_tokens))
        except InsufficientMemory as exc:
            for job in jobs:
                refuse(job, exc.error)
            return
        for job, start, count in accepted:
            tokens = sum(len(s) - specials for s in sequences[start:start + count])
            answer(job, vectors[start:start + count], pooled, prompt_tokens=tokens)
        logger.info("embedded %d input(s) of %d job(s) with %s in %.3fs", len(sequences), len(accepted), model_id,
                    time.perf_counter() - tic)


# Padded tokens per forward pass when AIHUB_EMBEDDING_MAX_BATCH_TOKENS is "auto". On a CPU, large passes run
# out of cache: all-MiniLM-L6-v2 embedded 256 sentences at 225 inputs/s in passes of up to 8192 tokens and at
# 345 in passes of up to 1024 (about 34 sentences, sentence-transformers' batch of 32), measured in one run on
# a 2-core EPYC. A GPU wants the larger passes.
AUTO_BATCH_TOKENS_CPU = 1024
AUTO_BATCH_TOKENS_ACCELERATOR = 8192


def batch_token_bound(setting: str, device_type: str) -> int:
    """The bound on padded tokens per pass: the setting's number, or the device's "auto" figure."""
    if str(setting).strip().lower() == "auto":
        return AUTO_BATCH_TOKENS_CPU if device_type == "cpu" else AUTO_BATCH_TOKENS_ACCELERATOR
    try:
        value = int(setting)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"AIHUB_EMBEDDING_MAX_BATCH_TOKENS must be 'auto' or a positive number, not {setting!r}")
    return value


def start(manager, nodename: str) -> EmbeddingService:
    service = EmbeddingService(manager, nodename=nodename, max_batch_tokens=batch_token_bound(
        settings.AIHUB_EMBEDDING_MAX_BATCH_TOKENS, manager.device.type))
    service.start(settings.AIHUB_EMBEDDING_THREADS)
    return service
