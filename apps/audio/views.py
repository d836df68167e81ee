"""POST /audio/transcriptions, /audio/translations and /audio/speech (OpenAI-compatible), async handlers of the one
request pipeline: each waits for a worker's audio thread (workers/audio.py) without holding a web thread."""
from __future__ import annotations

import base64

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import MultiPartParser

from apps.core import events
from apps.core.db import release_database_connection
from apps.core.endpoints import Endpoint, operation
from apps.core.errors import AppError, error_response

from .formats import sse, transcription_response, usage
from .jobs import AUDIO, PROGRESS, SEGMENT, SPEECH, TRANSLATE, AudioJob
from .serializers import SpeechRequestSerializer, TranscriptionRequestSerializer, TranslationRequestSerializer
from .services import audio_job_events, audio_job_settle, audio_job_submit, audio_model_get

SPEECH_CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                        "wav": "audio/wav", "pcm": "audio/pcm"}
TRANSCRIPT_RESPONSES = {"text/plain": str, "application/x-subrip": str, "text/vtt": str, "text/event-stream": str}
ERRORS = {403: None, 404: "model_not_found", 429: None, 500: None, 503: "queue_full", 504: None,
          507: "insufficient_memory"}


class JsonErrorsAnyAccept(DefaultContentNegotiation):
    """The answer's type is the format asked for in the body (audio, srt, ...), not the Accept header (OpenAI's SDK
    sends `application/octet-stream` for speech): DRF's renderers shape only errors here, always as JSON."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class TranscriptSerializer(serializers.Serializer):
    """The json format; verbose_json adds task, language, duration, segments and words; text, srt and vtt are text."""

    text = serializers.CharField()
    usage = serializers.DictField(required=False)


def _submit(request, data: dict, action: str) -> tuple[AudioJob, dict]:
    entry = audio_model_get(user=request.user, api_key=request.auth, model_id=data.get("model"), action=action)
    options = {"language": data.get("language"), "prompt": data.get("prompt") or None,
               "temperature": data["temperature"],
               "word_timestamps": "word" in data.get("timestamp_granularities", [])}
    return audio_job_submit(api_key=request.auth, entry=entry, action=action, options=options,
                            audio=data["file"].read())


async def _transcript(job: AudioJob, reservation: dict) -> dict:
    succeeded = False
    try:
        await release_database_connection()
        async for event in audio_job_events(job):
            if event["type"] == events.DONE:
                succeeded = True
                return event
        raise AppError("The worker did not answer.", status=504, type="server_error", code="timeout")
    finally:
        await sync_to_async(audio_job_settle)(job=job, reservation=reservation, succeeded=succeeded)


async def _opened(job: AudioJob, reservation: dict):
    """(the job's first event, an iterator of the rest). The first event decides the status: a refusal (audio
    that does not decode, an unknown voice) is raised here, still a 400, once the reservation is settled."""
    await release_database_connection()
    rest = audio_job_events(job)
    try:
        return await anext(rest), rest
    except (AppError, StopAsyncIteration) as error:
        await rest.aclose()
        await sync_to_async(audio_job_settle)(job=job, reservation=reservation, succeeded=False)
        if isinstance(error, AppError):
            raise
        raise AppError("The worker did not answer.", status=504, type="server_error", code="timeout") from None


async def _all(first: dict, rest):
    yield first
    async for event in rest:
        yield event


async def _stream(first: dict, rest, job: AudioJob, reservation: dict):
    """transcript.text.delta per segment, then transcript.text.done; progress as SSE comments (clients skip them)."""
    succeeded = False
    try:
        async for event in _all(first, rest):
            if event["type"] == SEGMENT:
                yield sse({"type": "transcript.text.delta", "delta": event["text"]})
            elif event["type"] == PROGRESS:
                yield f": progress {event['seconds']:.1f}/{event['duration']:.1f} s\n\n"
            elif event["type"] == events.DONE:
                succeeded = True
                yield sse({"type": "transcript.text.done", "text": event["text"], "usage": usage(event)})
    except AppError as error:  # the status line has left: the error goes as the stream's last event
        yield sse({"type": "error", "error": error.as_body()["error"]})
    finally:
        await rest.aclose()
        await sync_to_async(audio_job_settle)(job=job, reservation=reservation, succeeded=succeeded)


class _AudioToText(Endpoint):
    parser_classes = [MultiPartParser]
    content_negotiation_class = JsonErrorsAnyAccept
    action = "transcribe"

    async def _answer(self, request, data):
        job, reservation = await sync_to_async(_submit)(request, data, self.action)
        try:
            if data.get("stream"):
                first, rest = await _opened(job, reservation)
                response = StreamingHttpResponse(_stream(first, rest, job, reservation),
                                                 content_type="text/event-stream")
                response["Cache-Control"] = "no-cache"
                response["X-Accel-Buffering"] = "no"
                return response
            result = await _transcript(job, reservation)
        except AppError as error:
            return error_response(error)
        return transcription_response(result, response_format=data["response_format"], task=self.action,
                                      granularities=data.get("timestamp_granularities", ["segment"]))


class TranscriptionsView(_AudioToText):
    @operation(operation_id="audio_transcriptions_create", request=TranscriptionRequestSerializer,
               media_type="multipart/form-data",
               responses={(200, "application/json"): TranscriptSerializer,
                          **{(200, media): kind for media, kind in TRANSCRIPT_RESPONSES.items()}},
               summary="Transcribe audio (OpenAI-compatible; SSE when stream is true)",
               description="Audio that cannot be decoded, or lasts longer than AIHUB_AUDIO_MAX_SECONDS, is a 400 "
                           "(docs/multimodal.md).", errors=ERRORS)
    async def post(self, request, data):
        return await self._answer(request, data)


class TranslationsView(_AudioToText):
    action = TRANSLATE

    @operation(operation_id="audio_translations_create", request=TranslationRequestSerializer,
               media_type="multipart/form-data",
               responses={(200, "application/json"): TranscriptSerializer,
                          **{(200, media): kind for media, kind in TRANSCRIPT_RESPONSES.items()
                             if media != "text/event-stream"}},
               summary="Translate audio into English text (OpenAI-compatible; needs a multilingual model)",
               errors=ERRORS)
    async def post(self, request, data):
        return await self._answer(request, data)


class SpeechView(Endpoint):
    content_negotiation_class = JsonErrorsAnyAccept

    @operation(operation_id="audio_speech_create", request=SpeechRequestSerializer,
               responses={(200, media): bytes for media in SPEECH_CONTENT_TYPES.values()},
               summary="Synthesise speech (OpenAI-compatible), streamed as it is synthesised",
               description="The body is the audio in `response_format`, sent sentence by sentence (chunked). An "
                           "unknown voice is a 400 listing the available ones.", errors=ERRORS)
    async def post(self, request, data):
        entry = await sync_to_async(audio_model_get)(user=request.user, api_key=request.auth,
                                                     model_id=data.get("model"), action=SPEECH)
        options = {"input": data["input"], "voice": data["voice"], "response_format": data["response_format"],
                   "speed": data["speed"]}
        job, reservation = await sync_to_async(audio_job_submit)(api_key=request.auth, entry=entry, action=SPEECH,
                                                                 options=options)
        try:
            first, rest = await _opened(job, reservation)
        except AppError as error:
            return error_response(error)
        response = StreamingHttpResponse(_speech_bytes(first, rest, job, reservation),
                                         content_type=SPEECH_CONTENT_TYPES[data["response_format"]])
        response["X-Accel-Buffering"] = "no"
        return response


async def _speech_bytes(first: dict, rest, job: AudioJob, reservation: dict):
    succeeded = False
    try:
        async for event in _all(first, rest):
            if event["type"] == AUDIO:
                yield base64.b64decode(event["data"])
            elif event["type"] == events.DONE:
                succeeded = True
    except AppError:
        return  # the status has left: the client sees the audio end early (the worker logged why)
    finally:
        await rest.aclose()
        await sync_to_async(audio_job_settle)(job=job, reservation=reservation, succeeded=succeeded)
