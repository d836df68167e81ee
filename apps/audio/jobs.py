"""The audio job queue between the web and the inference workers: its keys and its one message shape.

The same path as embeddings (apps/embeddings/jobs.py says why not a Celery task): each
inference worker runs audio threads of its own (workers/audio.py) that pop jobs from
its Redis list (then the shared one) and answer through the job's event log
(apps/core/events.py). The uploaded audio does not travel in the job: it is stored
once in Redis under `audio_key(job.id)` (with the job's lifetime) and the job names it,
so a 25 MB upload is not copied through every list operation.

The events a job's log receives, in order (docs/multimodal.md):
- transcription: `progress` {"seconds", "duration"} and `segment` {"id", "start", "end", "text", "words"?}
  per segment as Whisper produces it, then `done` with the whole result, or `error`;
- speech: `audio` {"data": base64 bytes of the chosen format} per synthesised sentence, then `done`, or `error`.

No request row: a job is idempotent and keeps nothing. A job lost with a worker that died holding it ends as
the web's 504 `timeout`, and the client may simply send it again.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from apps.core.job_message import JobMessage

SHARED_QUEUE = "aihub:audio:jobs"  # any inference worker (no heartbeat seen: routing knows no worker)

TRANSCRIBE = "transcribe"
TRANSLATE = "translate"
SPEECH = "speech"

# Event types of an audio job's log, beside the event log's own `done` and `error`.
PROGRESS = "progress"
SEGMENT = "segment"
AUDIO = "audio"


def worker_queue(nodename: str) -> str:
    """The jobs routed to one worker, the one that holds (or will hold) the model (apps/catalog/placement.py)."""
    return f"{SHARED_QUEUE}:{nodename}"


def audio_key(job_id: str) -> str:
    """Where the job's input audio waits for the worker (base64, since the hub's Redis clients decode text)."""
    return f"aihub:audio:input:{job_id}"


@dataclass
class AudioJob(JobMessage):
    action: str  # transcribe, translate, speech
    model: str
    options: dict  # transcription: language, prompt, temperature, word_timestamps; speech: input, voice, ...
    expires_at: float = 0.0  # epoch seconds; past it the web has given up and a worker skips the job
    id: str = field(default_factory=lambda: f"audio-{uuid.uuid4().hex}")
