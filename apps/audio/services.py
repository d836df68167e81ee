"""Audio on the web side: check a request, queue its job for the worker that owns the model, follow its events.

No torch, no decoding here: the worker decodes (PyAV) and refuses what it cannot read,
and its refusal reaches the client as the 400 it is (workers/audio.py). Nothing is
stored: the uploaded audio waits in Redis for the worker, which deletes it once read.

`transcribe` is the web-side service for any code that needs a transcript (chat's
`input_audio` parts, a video's audio track): docs/multimodal.md.
"""
from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.conf import settings

from apps.accounts.limits import limits_admit, limits_settle
from apps.catalog.job_lists import job_list_send
from apps.catalog.models import ModelEntry
from apps.catalog.selectors import model_check_use, model_get
from apps.core import events
from apps.core.db import release_database_connection
from apps.core.errors import AppError, app_error_from_event
from apps.monitoring.counters import usage_record

from .jobs import SHARED_QUEUE, SPEECH, TRANSLATE, AudioJob, audio_key, worker_queue

READER_LEASE = settings.AIHUB_HTTP_READER_LEASE_SECONDS


def audio_model_get(*, user, api_key, model_id: str | None, action: str) -> ModelEntry:
    """The model the request names (or the default for its endpoint): 404 if the user may not see it, 400 if it
    is not of the endpoint's kind, or cannot translate."""
    use = "speech" if action == SPEECH else "transcription"
    default = settings.AIHUB_DEFAULT_SPEECH_MODEL if use == "speech" else settings.AIHUB_DEFAULT_TRANSCRIPTION_MODEL
    entry = model_get(user=user, key=api_key, model_id=model_id or default)
    model_check_use(entry=entry, use=use)
    if action == TRANSLATE and "translation" not in entry.capabilities:
        raise AppError(f"The model '{entry.id}' is English-only and cannot translate; name a multilingual Whisper "
                       "model (e.g. whisper:base, `importmodel --builtin whisper:base`).", param="model",
                       code="model_not_supported")
    return entry


def audio_job_submit(*, api_key, entry: ModelEntry, action: str, options: dict,
                     audio: bytes | None = None) -> tuple[AudioJob, dict]:
    """Take the request's share of the key's limits and queue the job for the worker holding the model.

    Returns the job and the limits reservation (settle it with `audio_job_settle` however the request ends).
    """
    job = AudioJob(action=action, model=entry.id, options=options,
                   expires_at=time.time() + settings.AIHUB_REQUEST_TIMEOUT_SECONDS)
    # Audio is not counted in tokens: the request takes a request and a concurrency slot of the key's limits.
    reservation = limits_admit(key=api_key, request_id=job.id, cost=0)
    # The upload waits beside the job rather than in it: a 25 MB message would be copied by every list operation.
    attachments = {audio_key(job.id): base64.b64encode(audio).decode("ascii")} if audio is not None else None
    try:
        job_list_send(entry=entry, message=job.dumps(), shared_queue=SHARED_QUEUE, worker_queue=worker_queue,
                      max_waiting=settings.AIHUB_AUDIO_MAX_QUEUE, kind="audio", attachments=attachments)
    except BaseException:
        limits_settle(reservation, used_tokens=0)
        raise
    return job, reservation


async def audio_job_events(job: AudioJob) -> AsyncIterator[dict]:
    """The job's events up to its final one; an `error` event is raised as the AppError it carries.

    The reader holds a lease (as chat streams do): a client that goes away stops the worker's job shortly after.
    """
    finished = False
    try:
        async for event in events.read_events(job.id, lease_seconds=READER_LEASE,
                                              idle_timeout=settings.AIHUB_REQUEST_TIMEOUT_SECONDS):
            if event["type"] == events.ERROR:
                finished = True
                raise app_error_from_event(event["error"])
            finished = event["type"] == events.DONE
            yield event
    finally:
        if not finished:
            await events.request_cancel(job.id)


def audio_job_settle(*, job: AudioJob, reservation: dict, succeeded: bool) -> None:
    """Give the concurrency slot back and count the request for /metrics."""
    limits_settle(reservation, used_tokens=0)
    usage_record(request_id=job.id, model_id=job.model, state="succeeded" if succeeded else "failed",
                 prompt_tokens=0)


async def transcribe(*, user, api_key, audio: bytes, model: str | None = None, translate: bool = False,
                     language: str | None = None, prompt: str | None = None, temperature: float = 0.0,
                     word_timestamps: bool = False) -> dict:
    """The transcript of `audio` (any format FFmpeg reads): {"text", "language", "language_name", "duration",
    "segments", "words"?}, from the worker that owns the model; a refusal is raised as an AppError (400 for
    audio it cannot decode or that is too long)."""
    if len(audio) > settings.AIHUB_AUDIO_MAX_BYTES:
        raise AppError(f"The audio is {len(audio)} bytes; this hub takes at most {settings.AIHUB_AUDIO_MAX_BYTES} "
                       "(AIHUB_AUDIO_MAX_BYTES).", param="file", code="audio_too_large")
    action = TRANSLATE if translate else "transcribe"
    entry = await sync_to_async(audio_model_get)(user=user, api_key=api_key, model_id=model, action=action)
    options = {"language": language, "prompt": prompt, "temperature": temperature,
               "word_timestamps": word_timestamps}
    job, reservation = await sync_to_async(audio_job_submit)(api_key=api_key, entry=entry, action=action,
                                                             options=options, audio=audio)
    succeeded = False
    try:
        await release_database_connection()  # no connection held while the worker works
        async for event in audio_job_events(job):
            if event["type"] == events.DONE:
                succeeded = True
                return {k: v for k, v in event.items() if k not in ("type", "seq")}
        raise AppError("The worker did not answer.", status=504, type="server_error", code="timeout")
    finally:
        await sync_to_async(audio_job_settle)(job=job, reservation=reservation, succeeded=succeeded)
