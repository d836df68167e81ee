"""Input shapes of /audio/transcriptions, /audio/translations (multipart forms) and /audio/speech (JSON).

A form's values are strings (`stream=true`, `temperature=0.2`): these fields parse them, as OpenAI's API does.
"""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from apps.core.fields import StrictCharField, StrictFloatField

TRANSCRIPT_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("word", "segment")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MIN_SPEED, MAX_SPEED = 0.5, 2.0  # the range the hibari voices were distilled for (OpenAI allows 0.25 to 4)


class AudioFileField(serializers.FileField):
    """The uploaded file, bounded by AIHUB_AUDIO_MAX_BYTES (the request body itself was bounded before parsing)."""

    default_error_messages = {"too_large": "the file is {size} bytes; at most {limit} are accepted "
                                           "(AIHUB_AUDIO_MAX_BYTES)."}

    def to_internal_value(self, data):
        file = super().to_internal_value(data)
        if file.size > settings.AIHUB_AUDIO_MAX_BYTES:
            self.fail("too_large", size=file.size, limit=settings.AIHUB_AUDIO_MAX_BYTES)
        return file


class FormListField(serializers.ListField):
    """A list in a form: `name[]` fields (apps/core/endpoints.py), or one plain `name` field as a list of one."""

    def to_internal_value(self, data):
        return super().to_internal_value([data] if isinstance(data, str) else data)


class TranslationRequestSerializer(serializers.Serializer):
    # OpenAI's parameters the hub does not implement: refused by name (apps/core/parameters.py).
    openai_parameters = frozenset({"chunking_strategy", "include", "known_speaker_names",
                                   "known_speaker_references"})

    file = AudioFileField(help_text="The audio: any format FFmpeg reads (flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav, "
                                    "webm, ...).")
    model = serializers.CharField(required=False, max_length=200,
                                  help_text="A speech-to-text model id (default AIHUB_DEFAULT_TRANSCRIPTION_MODEL).")
    prompt = serializers.CharField(required=False, allow_blank=True, max_length=2000,
                                   help_text="Text that came before the audio, or spellings to follow.")
    response_format = serializers.ChoiceField(choices=TRANSCRIPT_FORMATS, default="json")
    temperature = serializers.FloatField(required=False, default=0.0, min_value=0.0, max_value=1.0,
                                         help_text="0: Whisper's fallback (greedy first, hotter when decoding fails).")


class TranscriptionRequestSerializer(TranslationRequestSerializer):
    language = serializers.RegexField(r"^[a-z]{2,3}$", required=False,
                                      help_text="The spoken language, ISO-639-1 (e.g. en); detected when left out.")
    timestamp_granularities = FormListField(
        child=serializers.ChoiceField(choices=GRANULARITIES), required=False, max_length=2,
        help_text="With verbose_json: `segment` (the default), `word`, or both. A form sends it as "
                  "`timestamp_granularities[]`.")
    stream = serializers.BooleanField(required=False, default=False,
                                      help_text="Server-sent events: transcript.text.delta per segment, then "
                                                "transcript.text.done (json and text formats).")

    def validate(self, attrs):
        granularities = attrs.get("timestamp_granularities")
        if granularities and attrs["response_format"] != "verbose_json":
            raise serializers.ValidationError(
                {"timestamp_granularities": "needs response_format verbose_json."})
        if attrs["stream"] and attrs["response_format"] not in ("json", "text"):
            raise serializers.ValidationError(
                {"stream": "streams text deltas; response_format must be json or text."})
        attrs["timestamp_granularities"] = granularities or ["segment"]
        return attrs


class SpeechRequestSerializer(serializers.Serializer):
    openai_parameters = frozenset({"instructions"})

    model = StrictCharField(required=False, max_length=200,
                            help_text="A text-to-speech model id (default AIHUB_DEFAULT_SPEECH_MODEL).")
    input = StrictCharField(max_length=settings.AIHUB_SPEECH_MAX_CHARS, trim_whitespace=False,
                            help_text="The text to speak.")
    voice = StrictCharField(max_length=100, help_text="A voice of the model (an unknown one is refused with the "
                                                      "list of those available).")
    response_format = serializers.ChoiceField(choices=SPEECH_FORMATS, default="mp3")
    speed = StrictFloatField(required=False, default=1.0, min_value=MIN_SPEED, max_value=MAX_SPEED)
    stream_format = serializers.ChoiceField(choices=["audio"], required=False, default="audio",
                                            help_text="`audio` (the bytes, streamed as synthesised); `sse` is not "
                                                      "supported.")

    def validate_input(self, value):
        if not value.strip():
            raise serializers.ValidationError("must hold text to speak.")
        return value
