"""The embedding job queue between the web and the inference workers: its keys and its one message shape.

Why not a Celery task (docs/queues.md, "Embeddings"): an inference worker's Celery
threads are held by chat generations for as long as they run (acks_late), so an
embedding message would wait in the broker behind every generation ahead of it.
Each inference worker instead runs a small pool of embedding threads of its own
(workers/embeddings.py) that pop jobs from a Redis list, batch the inputs of every
job they find waiting into shared forward passes, and answer through the job's
event log (apps/core/events.py), as control commands do.

No request row: a job is short and idempotent. A job lost with a worker that died
holding it ends as the web's 504 `timeout`, and the client may simply send it again.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from apps.core.job_message import JobMessage

SHARED_QUEUE = "aihub:embeddings:jobs"  # any inference worker (no heartbeat seen: routing knows no worker)


def worker_queue(nodename: str) -> str:
    """The jobs routed to one worker, the one that holds (or will hold) the model (apps/catalog/placement.py)."""
    return f"{SHARED_QUEUE}:{nodename}"


@dataclass
class EmbeddingJob(JobMessage):
    model: str
    inputs: list  # strings, or lists of token ids (`tokens`)
    tokens: bool = False
    dimensions: int | None = None
    # Internal callers only (conversation search): cut an input to the model's context instead of refusing it.
    # The API keeps OpenAI's refusal; an index of text would rather embed a long message's beginning than none.
    truncate: bool = False
    expires_at: float = 0.0  # epoch seconds; past it the web has given up and a worker skips the job
    id: str = field(default_factory=lambda: f"embeddings-{uuid.uuid4().hex}")
