"""Input shape of POST /embeddings (OpenAI's embeddings.create). Every size a client controls is bounded here."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.fields import StrictCharField, StrictIntegerField

ENCODING_FORMATS = ("float", "base64")


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}


@extend_schema_field({"oneOf": [
    {"type": "string", "minLength": 1},
    {"type": "array", "minItems": 1, "maxItems": 2048, "items": {"type": "string", "minLength": 1}},
    _TOKENS, {"type": "array", "minItems": 1, "maxItems": 2048, "items": _TOKENS}]})
class EmbeddingInputField(serializers.Field):
    """A string, a list of strings, a list of token ids, or a list of token-id lists.

    Returns {"inputs": [...], "tokens": bool}: strings, or lists of token ids. Token
    ids are the model's tokenizer's ids of the text alone; the worker adds the
    model's special tokens, so a text and its ids embed alike (docs/api.md).
    """

    default_error_messages = {
        "type": "must be a string, a list of strings, a list of token ids or a list of token-id lists.",
        "empty": "must not be empty.",
        "count": "holds {count} inputs; at most {limit} are accepted per request.",
        "empty_item": "input {index} is empty; every input must hold text or tokens.",
        "chars": "input {index} has {chars} characters; at most {limit} are accepted.",
        "token_count": "input {index} has {count} tokens; at most {limit} are accepted.",
        "token_value": "input {index} holds a token id that is not a non-negative integer.",
        "mixed": "every input must be of one kind: all strings, or all token-id lists.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list):
            self.fail("type")
        if not data:
            self.fail("empty")
        if all(_is_token(item) for item in data):
            data = [data]  # one input given as token ids
        limit = settings.AIHUB_EMBEDDING_MAX_INPUTS
        if len(data) > limit:
            self.fail("count", count=len(data), limit=limit)
        if all(isinstance(item, str) for item in data):
            return {"inputs": self._texts(data), "tokens": False}
        if all(isinstance(item, list) for item in data):
            return {"inputs": self._token_lists(data), "tokens": True}
        if any(isinstance(item, str) for item in data) and any(isinstance(item, list) for item in data):
            self.fail("mixed")
        self.fail("type")

    def _texts(self, texts: list[str]) -> list[str]:
        limit = settings.AIHUB_EMBEDDING_MAX_INPUT_CHARS
        for index, text in enumerate(texts):
            if not text:
                self.fail("empty_item", index=index)
            if len(text) > limit:
                self.fail("chars", index=index, chars=len(text), limit=limit)
        return texts

    def _token_lists(self, lists: list[list]) -> list[list[int]]:
        limit = settings.AIHUB_EMBEDDING_MAX_INPUT_TOKENS
        for index, ids in enumerate(lists):
            if not ids:
                self.fail("empty_item", index=index)
            if len(ids) > limit:
                self.fail("token_count", index=index, count=len(ids), limit=limit)
            if not all(_is_token(token) and token >= 0 for token in ids):
                self.fail("token_value", index=index)
        return lists

    def to_representation(self, value):
        return value


class EmbeddingRequestSerializer(serializers.Serializer):
    input = EmbeddingInputField(help_text="A string, a list of strings, a list of token ids, or a list of "
                                          "token-id lists.")
    model = StrictCharField(required=False, allow_blank=False, max_length=200,  # ModelEntry.id
                            help_text="An embedding model id (default AIHUB_DEFAULT_EMBEDDING_MODEL).")
    encoding_format = serializers.ChoiceField(choices=ENCODING_FORMATS, required=False, default="float",
                                      help_text="`float` (lists of numbers) or `base64` (little-endian float32).")
    dimensions = StrictIntegerField(required=False, allow_null=True, min_value=1,
                                    help_text="Fewer dimensions, for models trained for truncation only.")
    user = StrictCharField(required=False, allow_blank=True, max_length=256)


@extend_schema_field({"oneOf": [{"type": "array", "items": {"type": "number"}},
                                {"type": "string", "description": "base64 of little-endian float32"}]})
class EmbeddingVectorField(serializers.Field):
    def to_representation(self, value):
        return value


class EmbeddingSerializer(serializers.Serializer):
    object = serializers.CharField(default="embedding")
    index = serializers.IntegerField()
    embedding = EmbeddingVectorField()


class EmbeddingUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbeddingsListSerializer(serializers.Serializer):
    """OpenAI's embeddings answer, for the schema (services.embeddings_body builds it)."""

    object = serializers.CharField(default="list")
    data = EmbeddingSerializer(many=True)
    model = serializers.CharField()
    usage = EmbeddingUsageSerializer()
