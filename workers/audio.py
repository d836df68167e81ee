"""The inference worker's audio threads: transcriptions, translations and speech (apps/audio/jobs.py is the protocol).

Each thread (workers/job_threads.py) pops one job from this worker's list (then the
shared one), takes the model from the worker's ModelManager (same budget, LRU,
keep-alive and /models/status as chat models), and answers through the job's event
log: segments and progress as Whisper produces them, speech chunk by chunk as each
sentence is synthesised. A client that goes away (the web sets the job's cancel flag)
stops the job between segments or sentences.

`transcribe` and `transcribe_samples` are the worker-side entry points for any other
worker code that needs a transcript (the audio track of a video, docs/multimodal.md).
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from django.conf import settings

from apps.audio.jobs import AUDIO, PROGRESS, SEGMENT, SHARED_QUEUE, SPEECH, AudioJob, audio_key, worker_queue
from apps.catalog.models import ModelEntry
from apps.core import events
from apps.core.errors import error_object
from apps.core.redis import sync_client

from .audio_runtime import AudioRefused, SpeechEncoder, decode_audio
from .job_threads import JobThreads
from .model_manager import InsufficientMemory, ModelSpec

logger = logging.getLogger(__name__)

# OpenAI's temperature 0 means "start greedy, raise the temperature when decoding fails"; Whisper's fallback.
TEMPERATURE_FALLBACK = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class Stopped(Exception):
    """The client went away; the job ends without an answer."""


def transcribe_samples(loaded, samples: np.ndarray, *, task: str = "transcribe", language: str | None = None,
                       prompt: str | None = None, temperature: float = 0.0, word_timestamps: bool = False,
                       on_segment: Callable[[dict, float], None] | None = None) -> dict:
    """Whisper on 16 kHz mono float32 samples: {"text", "language", "language_name", "duration", "segments",
    "words"?}. Long audio is decoded window by window (30 s each, Whisper's own chunking, each window
    conditioned on the text before it); `on_segment(segment, duration)` is called as each segment is ready.
    """
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    model = loaded.model
    multilingual = model.model.is_multilingual
    if task == "translate" and not multilingual:
        raise AudioRefused(f"The model '{loaded.model_id}' is English-only and cannot translate; use a multilingual "
                           "Whisper model.", param="model", code="model_not_supported")
    if language and language not in LANGUAGES:
        raise AudioRefused(f"language: '{language}' is not an ISO-639-1 code Whisper knows.", param="language",
                           code="invalid_value")
    if language and not multilingual and language != "en":
        raise AudioRefused(f"The model '{loaded.model_id}' is English-only; it cannot transcribe '{language}'.",
                           param="language", code="invalid_value")
    segments, info = model.transcribe(
        samples, task=task, language=language or (None if multilingual else "en"), initial_prompt=prompt or None,
        temperature=TEMPERATURE_FALLBACK if not temperature else temperature, word_timestamps=word_timestamps,
        beam_size=settings.AIHUB_WHISPER_BEAM_SIZE)
    out, words = [], []
    for segment in segments:  # a generator: each window is decoded as the loop asks for it
        item = {"id": segment.id - 1, "seek": segment.seek, "start": round(segment.start, 3),
                "end": round(segment.end, 3), "text": segment.text, "tokens": segment.tokens,
                "temperature": segment.temperature, "avg_logprob": segment.avg_logprob,
                "compression_ratio": segment.compression_ratio, "no_speech_prob": segment.no_speech_prob}
        if word_timestamps:
            item["words"] = [{"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
                             for w in segment.words or []]
            words += item["words"]
        out.append(item)
        if on_segment is not None:
            on_segment(item, info.duration)
    result = {"text": "".join(s["text"] for s in out).strip(), "language": info.language,
              "language_name": LANGUAGES.get(info.language, info.language), "duration": round(info.duration, 3),
              "segments": out}
    if word_timestamps:
        result["words"] = words
    return result


def transcribe(manager, *, model_id: str, audio: bytes | np.ndarray, **options) -> dict:
    """Worker side: the transcript of `audio` (a file's bytes, or 16 kHz samples) with the catalog model `model_id`.

    For worker code outside the audio threads (a video's audio track): takes the model from `manager` like a
    job does. Raises AudioRefused (its `.error` is the API's 400) or InsufficientMemory (507).
    """
    entry = ModelEntry.objects.filter(id=model_id, enabled=True).first()
    if entry is None:
        raise AudioRefused(f"The model '{model_id}' was removed.", param="model", code="model_not_found")
    samples = audio if isinstance(audio, np.ndarray) else decode_audio(audio,
                                                                       max_seconds=settings.AIHUB_AUDIO_MAX_SECONDS)
    with manager.use(ModelSpec.from_entry(entry)) as loaded:
        return transcribe_samples(loaded, samples, **options)


def fail(job: AudioJob, error: dict) -> None:
    """The job's final `error`, after whatever segments or audio it already wrote (a fresh writer would reuse
    their sequence numbers, and the event would be lost)."""
    events.EventWriter.continuing(job.id).append(events.ERROR, error=error)


class AudioService:
    """The audio threads of one inference worker process."""

    def __init__(self, manager, *, nodename: str):
        self.manager = manager
        self.queues = [worker_queue(nodename), SHARED_QUEUE]  # its own first: routing sent those here

    def start(self, threads: int) -> list[threading.Thread]:
        # One job per take: Whisper decodes window after window, there is nothing to batch across requests.
        return JobThreads("audio", queues=self.queues, loads=AudioJob.loads, serve=self.serve_each,
                          max_jobs=1).start(threads)

    def serve_each(self, jobs: list[AudioJob]) -> None:
        for job in jobs:  # one, with max_jobs=1
            self.serve(job)

    def serve(self, job: AudioJob) -> None:
        tic = time.perf_counter()
        try:
            entry = ModelEntry.objects.filter(id=job.model, enabled=True).first()
            if entry is None:
                raise AudioRefused(f"The model '{job.model}' was removed.", param="model", code="model_not_found")
            with self.manager.use(ModelSpec.from_entry(entry)) as loaded:
                if job.action == SPEECH:
                    self.speak(job, loaded)
                else:
                    self.transcribe_job(job, loaded)
        except (AudioRefused, InsufficientMemory) as exc:
            fail(job, exc.error)
        except Stopped:
            logger.info("audio job %s stopped: its client went away", job.id)
        except Exception:  # noqa: BLE001 - every job must get an answer, not the web's timeout
            logger.exception("audio job %s (%s) failed", job.id, job.model)
            fail(job, error_object("The audio job failed on the worker; see the worker log.", type="server_error",
                                   code="audio_failed"))
        finally:
            sync_client().delete(audio_key(job.id))
        logger.info("%s job %s with %s in %.3fs", job.action, job.id, job.model, time.perf_counter() - tic)

    def transcribe_job(self, job: AudioJob, loaded) -> None:
        raw = sync_client().get(audio_key(job.id))
        if raw is None:
            raise AudioRefused("The uploaded audio expired before a worker took the job; send it again.")
        samples = decode_audio(base64.b64decode(raw), max_seconds=settings.AIHUB_AUDIO_MAX_SECONDS)
        writer = events.EventWriter(job.id)
        with events.StopSignal(job.id) as stop:
            def on_segment(segment: dict, duration: float) -> None:
                if stop():
                    raise Stopped()
                writer.append(SEGMENT, **segment)
                writer.append(PROGRESS, seconds=segment["end"], duration=round(duration, 3))

            result = transcribe_samples(loaded, samples, task=job.action, on_segment=on_segment, **job.options)
        writer.append(events.DONE, **result)

    def speak(self, job: AudioJob, loaded) -> None:
        options = job.options
        voices = loaded.model
        voice = voices.get(options["voice"])
        encoder = SpeechEncoder(options["response_format"], voice.sample_rate)
        writer = events.EventWriter(job.id)
        with voices.lock:  # the text front end (G2P) is plain Python state; the ONNX session is thread-safe
            sentences = voice.phonemize(options["input"])
        if not sentences:
            raise AudioRefused("input: the text holds nothing that can be spoken.", param="input",
                               code="invalid_value")
        pending, seconds, rng = encoder.start(), 0.0, np.random.default_rng()
        with events.StopSignal(job.id) as stop:
            for phonemes in sentences:
                samples = voice.from_ids(voice.ids(phonemes), options.get("speed", 1.0), rng)
                if stop():
                    raise Stopped()
                seconds += samples.shape[0] / voice.sample_rate
                pending += encoder.encode(samples)
                if pending:
                    writer.append(AUDIO, data=base64.b64encode(pending).decode("ascii"))
                    pending = b""
        pending += encoder.finish()
        if pending:
            writer.append(AUDIO, data=base64.b64encode(pending).decode("ascii"))
        writer.append(events.DONE, seconds=round(seconds, 3), characters=len(options["input"]))


def start(manager, nodename: str) -> AudioService:
    service = AudioService(manager, nodename=nodename)
    service.start(settings.AIHUB_AUDIO_THREADS)
    return service

