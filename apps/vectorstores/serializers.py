"""Input and output shapes of /vector_stores (OpenAI's), every size a client controls bounded here."""
from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.errors import AppError
from apps.core.fields import (
    MetadataField,
    QueryIntegerField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from apps.core.parameters import UnsupportedParameter

from .chunking import MAX_CHUNK_TOKENS, MIN_CHUNK_TOKENS
from .filters import COMPARISONS, COMPOUND, MEMBERSHIP, filters_check
from .search import MAX_RESULTS
from .selectors import FILE_STATUSES

LIST_LIMIT_MAX = 100
MAX_FILES_PER_REQUEST = 500


@extend_schema_field({"type": "object", "maxProperties": 16, "description": "keys of 1 to 64 characters",
                      "additionalProperties": {"oneOf": [{"type": "string", "maxLength": 512}, {"type": "number"},
                                                         {"type": "boolean"}]}})
class AttributesField(serializers.Field):
    """OpenAI's attributes: up to 16 pairs, keys of at most 64 characters; values strings (512), numbers, booleans."""

    default_error_messages = {"type": "must be an object of at most 16 keys (64 characters each) whose values are "
                                      "strings (512 characters each), numbers or booleans."}

    def to_internal_value(self, data):
        def valid(value) -> bool:
            if isinstance(value, str):
                return len(value) <= 512
            return isinstance(value, (bool, int, float)) and value == value and abs(value) != float("inf")
        if not (isinstance(data, dict) and len(data) <= 16 and all(
                isinstance(key, str) and 0 < len(key) <= 64 and valid(value) for key, value in data.items())):
            self.fail("type")
        return data

    def to_representation(self, value):
        return value


class StaticChunkingSerializer(serializers.Serializer):
    max_chunk_size_tokens = StrictIntegerField(min_value=MIN_CHUNK_TOKENS, max_value=MAX_CHUNK_TOKENS)
    chunk_overlap_tokens = StrictIntegerField(min_value=0)

    def validate(self, attrs):
        if attrs["chunk_overlap_tokens"] > attrs["max_chunk_size_tokens"] // 2:
            raise serializers.ValidationError({"chunk_overlap_tokens": "must not exceed half of "
                                                                       "max_chunk_size_tokens."})
        return attrs


class ChunkingStrategySerializer(serializers.Serializer):
    """`{"type": "auto"}` (OpenAI's 800/400, capped by the store's model) or `{"type": "static", "static": {...}}`."""

    type = serializers.ChoiceField(choices=["auto", "static"])
    static = StaticChunkingSerializer(required=False)

    def validate(self, attrs):
        if attrs["type"] == "static" and "static" not in attrs:
            raise serializers.ValidationError({"static": "is required when type is static."})
        if attrs["type"] == "auto" and "static" in attrs:
            raise serializers.ValidationError({"static": "only goes with type static."})
        return attrs


class ExpiresAfterSerializer(serializers.Serializer):
    anchor = serializers.ChoiceField(choices=["last_active_at"])
    days = StrictIntegerField(min_value=1, max_value=365)


def _file_ids(**kwargs) -> serializers.ListField:
    return serializers.ListField(child=StrictCharField(max_length=100), max_length=MAX_FILES_PER_REQUEST, **kwargs)


class VectorStoreCreateSerializer(serializers.Serializer):
    openai_parameters = frozenset({"description"})  # refused by name (apps/core/parameters.py)

    name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    metadata = MetadataField(required=False, allow_null=True)
    file_ids = _file_ids(required=False)
    chunking_strategy = ChunkingStrategySerializer(required=False, allow_null=True)
    expires_after = ExpiresAfterSerializer(required=False, allow_null=True)
    embedding_model = StrictCharField(
        required=False, max_length=200,
        help_text=f"AI Hub extension: the embedding model (default {settings.AIHUB_DEFAULT_EMBEDDING_MODEL}).")


class VectorStoreModifySerializer(serializers.Serializer):
    name = StrictCharField(required=False, allow_blank=True, allow_null=True, max_length=256)
    metadata = MetadataField(required=False, allow_null=True)
    expires_after = ExpiresAfterSerializer(required=False, allow_null=True)


class ListQuerySerializer(serializers.Serializer):
    after = StrictCharField(required=False, help_text="An object id: the page starts after it.")
    before = StrictCharField(required=False, help_text="An object id: the page ends before it.")
    limit = QueryIntegerField(required=False, min_value=1, max_value=LIST_LIMIT_MAX, default=20)
    order = serializers.ChoiceField(choices=["asc", "desc"], required=False, default="desc")


class FileListQuerySerializer(ListQuerySerializer):
    filter = serializers.ChoiceField(choices=FILE_STATUSES, required=False, help_text="Only files in this status.")


class FileCreateSerializer(serializers.Serializer):
    file_id = StrictCharField(max_length=100)
    attributes = AttributesField(required=False, allow_null=True)
    chunking_strategy = ChunkingStrategySerializer(required=False, allow_null=True)


class FileUpdateSerializer(serializers.Serializer):
    attributes = AttributesField(allow_null=True)


class FileBatchCreateSerializer(serializers.Serializer):
    file_ids = _file_ids(required=False, allow_empty=False)
    files = FileCreateSerializer(many=True, required=False, allow_empty=False, max_length=MAX_FILES_PER_REQUEST)
    attributes = AttributesField(required=False, allow_null=True)
    chunking_strategy = ChunkingStrategySerializer(required=False, allow_null=True)

    def validate(self, attrs):
        if bool(attrs.get("file_ids")) == bool(attrs.get("files")):
            raise serializers.ValidationError({"file_ids": "give file_ids or files (one of them)."})
        return attrs


_SCALAR = [{"type": "string", "maxLength": 512}, {"type": "number"}, {"type": "boolean"}]


@extend_schema_field({"description": "a comparison or a compound filter (docs/vector_stores.md)", "oneOf": [
    {"type": "object", "additionalProperties": False, "required": ["type", "key", "value"], "properties": {
        "type": {"type": "string", "enum": list(COMPARISONS)}, "key": {"type": "string", "minLength": 1,
                                                                       "maxLength": 64},
        "value": {"oneOf": _SCALAR}}},
    {"type": "object", "additionalProperties": False, "required": ["type", "key", "value"], "properties": {
        "type": {"type": "string", "enum": list(MEMBERSHIP)}, "key": {"type": "string", "minLength": 1,
                                                                      "maxLength": 64},
        "value": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"oneOf": _SCALAR}}}},
    {"type": "object", "additionalProperties": False, "required": ["type", "filters"], "properties": {
        "type": {"type": "string", "enum": list(COMPOUND)},
        "filters": {"type": "array", "minItems": 1, "items": {"type": "object"}}}}]})
class FiltersField(serializers.Field):
    def to_internal_value(self, data):
        try:
            return filters_check(data, self.field_name)
        except AppError as error:
            # Raised again as DRF's nested detail, so that the path names where the field sits when it is nested
            # (`retrieval.filters.value`, `tools.0.filters.filters.1.type`), not only its own part.
            detail = error.message.split(": ", 1)[-1]
            for part in reversed((error.param or self.field_name).split(".")[1:]):
                detail = {part: detail}
            raise serializers.ValidationError(detail) from None

    def to_representation(self, value):
        return value


class RankingOptionsSerializer(serializers.Serializer):
    openai_parameters = frozenset({"hybrid_search"})

    ranker = serializers.ChoiceField(choices=["auto", "default-2024-11-15"], required=False,
                                     help_text="Both rank by cosine similarity.")
    score_threshold = StrictFloatField(required=False, min_value=0.0, max_value=1.0)


_QUERY = {"type": "string", "minLength": 1, "maxLength": settings.AIHUB_EMBEDDING_MAX_INPUT_CHARS,
          "pattern": r"\S"}


@extend_schema_field({"oneOf": [_QUERY, {"type": "array", "minItems": 1, "maxItems": 16, "items": _QUERY}]})
class QueryField(serializers.Field):
    default_error_messages = {"type": "must be a non-empty string or a list of 1 to 16 non-empty strings "
                                      "(each at most {limit} characters)."}

    def to_internal_value(self, data):
        items = [data] if isinstance(data, str) else data
        limit = settings.AIHUB_EMBEDDING_MAX_INPUT_CHARS
        if not (isinstance(items, list) and 0 < len(items) <= 16 and all(
                isinstance(item, str) and item.strip() and len(item) <= limit for item in items)):
            self.fail("type", limit=limit)
        return data

    def to_representation(self, value):
        return value


@extend_schema_field({"type": "boolean", "enum": [False], "description": "false only: the hub does not rewrite "
                                                                        "queries"})
class NoRewriteField(StrictBooleanField):
    def to_internal_value(self, data):
        if super().to_internal_value(data):
            raise UnsupportedParameter("rewrite_query", why="the hub does not rewrite queries (that takes a chat "
                                                            "model's turn per search); send false or leave it out.")
        return False


class SearchSerializer(serializers.Serializer):
    query = QueryField()
    max_num_results = StrictIntegerField(required=False, min_value=1, max_value=MAX_RESULTS, default=10)
    ranking_options = RankingOptionsSerializer(required=False, allow_null=True)
    filters = FiltersField(required=False, allow_null=True)
    rewrite_query = NoRewriteField(required=False, default=False)


# Answers.

class FileCountsSerializer(serializers.Serializer):
    in_progress = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    total = serializers.IntegerField()


class VectorStoreSerializer(serializers.Serializer):
    """OpenAI's vector_store (bodies.store_body builds it), plus `embedding_model` and `dimensions`."""

    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    name = serializers.CharField()
    usage_bytes = serializers.IntegerField()
    file_counts = FileCountsSerializer()
    status = serializers.ChoiceField(choices=["expired", "in_progress", "completed"])
    expires_after = ExpiresAfterSerializer(allow_null=True)
    expires_at = serializers.IntegerField(allow_null=True)
    last_active_at = serializers.IntegerField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField())
    embedding_model = serializers.CharField()
    dimensions = serializers.IntegerField()
    chunking_strategy = serializers.JSONField()


class LastErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class VectorStoreFileSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    vector_store_id = serializers.CharField()
    status = serializers.ChoiceField(choices=FILE_STATUSES)
    last_error = LastErrorSerializer(allow_null=True)
    usage_bytes = serializers.IntegerField()
    chunking_strategy = serializers.JSONField()
    attributes = serializers.JSONField()


class FileBatchSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    created_at = serializers.IntegerField()
    vector_store_id = serializers.CharField()
    status = serializers.ChoiceField(choices=FILE_STATUSES)  # a batch goes through its files' statuses
    file_counts = FileCountsSerializer()


class DeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


class SearchResultSerializer(serializers.Serializer):
    file_id = serializers.CharField()
    filename = serializers.CharField()
    score = serializers.FloatField()
    attributes = serializers.JSONField()
    content = serializers.ListField(child=serializers.DictField())


class SearchPageSerializer(serializers.Serializer):
    object = serializers.CharField(default="vector_store.search_results.page")
    search_query = serializers.ListField(child=serializers.CharField())
    data = SearchResultSerializer(many=True)
    has_more = serializers.BooleanField()
    next_page = serializers.CharField(allow_null=True)
