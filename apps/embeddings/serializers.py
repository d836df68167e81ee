"""Input shape of POST /embeddings (OpenAI's embeddings.create). Every size a client controls is bounded here."""
from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from apps.core.errors import AppError
from apps.core.fields import StrictCharField, StrictIntegerField

ENCODING_FORMATS = ("float", "base64")


def _is_token(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    encoding_format = StrictCharField(required=False, default="float",
                                      help_text="`float` (lists of numbers) or `base64` (little-endian float32).")
    dimensions = StrictIntegerField(required=False, allow_null=True, min_value=1,
                                    help_text="Fewer dimensions, for models trained for truncation only.")
    user = StrictCharField(required=False, allow_blank=True, max_length=256)

    def to_internal_value(self, data):
        # Never ignore a parameter silently (OpenAI's own `unsupported_parameter`); the shared request pipeline
        # will do this for every endpoint, and this check then goes.
        unknown = sorted(set(data) - set(self.fields)) if isinstance(data, dict) else []
        if unknown:
            raise AppError(f"Unrecognized request argument supplied: {unknown[0]}.", param=unknown[0],
                           code="unsupported_parameter")
        return super().to_internal_value(data)

    def validate_encoding_format(self, value):
        if value not in ENCODING_FORMATS:
            raise serializers.ValidationError(f"'{value}' is not one of {', '.join(ENCODING_FORMATS)}.")
        return value
