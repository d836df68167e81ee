"""The shape of a Responses API request (POST /api/v1/responses), as OpenAI defines it.

Only the shape is checked here; what the items mean for the model is chat's
business: services.py turns them into chat messages, and chat's serializer
then applies every limit chat has (message count, characters, roles).
"""
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.chat.retrieval import DEFAULT_RESULTS, MAX_STORES
from apps.core.fields import MetadataField, StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from apps.core.parameters import UnsupportedParameter
from apps.vectorstores.search import MAX_RESULTS
from apps.vectorstores.serializers import FiltersField, RankingOptionsSerializer

INPUT_ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1, "items": {"type": "object"}}]})
class ResponseInputField(serializers.Field):
    """A string (one user message) or a list of input items: messages, function calls and their outputs."""

    default_error_messages = {
        "type": "must be a string or a list of input items.",
        "item": "item {index}: {problem}",
        "count": "at most {count} input items are accepted.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            return [{"type": "message", "role": "user", "content": data}]
        if not isinstance(data, list) or not data:
            self.fail("type")
        if len(data) > settings.AIHUB_MAX_MESSAGES:
            self.fail("count", count=settings.AIHUB_MAX_MESSAGES)
        return [self._item(index, item) for index, item in enumerate(data)]

    def _item(self, index: int, item) -> dict:
        if not isinstance(item, dict):
            self.fail("item", index=index, problem="must be an object.")
        kind = item.get("type", "message")  # EasyInputMessage may leave the type out
        if kind == "message":
            if item.get("role") not in INPUT_ROLES:
                self.fail("item", index=index, problem=f"role must be one of {', '.join(INPUT_ROLES)}.")
            return {"type": "message", "role": item["role"], "content": self._content(index, item.get("content"))}
        if kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    self.fail("item", index=index, problem=f"a function_call needs a string '{field}'.")
            return {"type": kind, "call_id": item["call_id"], "name": item["name"], "arguments": item["arguments"]}
        if kind == "function_call_output":
            if not isinstance(item.get("call_id"), str) or not isinstance(item.get("output"), str):
                self.fail("item", index=index, problem="a function_call_output needs string 'call_id' and 'output'.")
            return {"type": kind, "call_id": item["call_id"], "output": item["output"]}
        self.fail("item", index=index, problem=f"input items of type '{kind}' are not supported; send message, "
                                               "function_call or function_call_output items.")

    def _content(self, index: int, content):
        """Text stays text; image parts become chat's image_url parts (chat decides whether a model takes them)."""
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            self.fail("item", index=index, problem="content must be a string or a list of content parts.")
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in TEXT_PARTS and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_image":
                parts.append({"type": "image_url", "image_url": {"url": part.get("image_url") or ""}})
            else:
                self.fail("item", index=index, problem=f"content part type '{kind}' is not supported; send "
                                                       "input_text, output_text or input_image parts.")
        return parts

    def to_representation(self, value):
        return value


FUNCTION_KEYS = ("name", "description", "parameters", "strict")
FILE_SEARCH_KEYS = ("vector_store_ids", "max_num_results", "filters", "ranking_options")
INCLUDABLE = ("file_search_call.results",)


class ResponseToolSerializer(serializers.Serializer):
    """A function tool (run by the client) or the file_search tool (run by the hub over your vector stores)."""

    type = serializers.ChoiceField(choices=["function", "file_search"],
                                   help_text="function, or file_search over your vector stores.")
    name = StrictCharField(required=False, max_length=64)
    description = StrictCharField(required=False, allow_blank=True, allow_null=True)
    parameters = serializers.DictField(required=False, allow_null=True)
    strict = StrictBooleanField(required=False, allow_null=True)
    vector_store_ids = serializers.ListField(child=serializers.CharField(max_length=64), required=False,
                                             min_length=1, max_length=MAX_STORES)
    max_num_results = StrictIntegerField(required=False, min_value=1, max_value=MAX_RESULTS,
                                         help_text=f"At most this many chunks (default {DEFAULT_RESULTS}).")
    filters = FiltersField(required=False, allow_null=True)
    ranking_options = RankingOptionsSerializer(required=False, allow_null=True)

    def validate(self, attrs):
        own, other = (FUNCTION_KEYS, FILE_SEARCH_KEYS) if attrs["type"] == "function" else \
            (FILE_SEARCH_KEYS, FUNCTION_KEYS)
        for key in other:
            if attrs.get(key) is not None:
                raise serializers.ValidationError({key: f"a {attrs['type']} tool has no '{key}'."})
        required = own[0]
        if not attrs.get(required):
            raise serializers.ValidationError({required: "This field is required."})
        return attrs


@extend_schema_field({"oneOf": [
    {"type": "string", "enum": ["auto", "none", "required"]},
    {"type": "object", "required": ["type", "name"], "additionalProperties": False,
     "properties": {"type": {"type": "string", "enum": ["function"]}, "name": {"type": "string"}}}]})
class ResponseToolChoiceField(serializers.Field):
    """The Responses API's tool_choice: a mode, or {"type": "function", "name"} (chat nests the name)."""

    # Braces doubled: DRF formats these messages with str.format.
    default_error_messages = {
        "type": "must be 'auto', 'none', 'required' or {{\"type\": \"function\", \"name\": ...}}."}

    def to_internal_value(self, data):
        if data in ("auto", "none", "required"):
            return data
        if isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("name"), str) \
                and set(data) == {"type", "name"}:
            return {"type": "function", "name": data["name"]}
        self.fail("type")

    def to_representation(self, value):
        return value


@extend_schema_field({"type": "object", "required": ["type"], "properties": {
    "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]}, "name": {"type": "string"},
    "description": {"type": "string"}, "schema": {"type": "object"}, "strict": {"type": "boolean", "nullable": True}}})
class TextFormatField(serializers.DictField):
    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value.get("type") not in ("text", "json_object", "json_schema"):
            raise serializers.ValidationError("type must be 'text', 'json_object' or 'json_schema'.")
        return value


class TextConfigSerializer(serializers.Serializer):
    format = TextFormatField(required=False, help_text='{"type": "text" | "json_object" | "json_schema", ...}')


@extend_schema_field({"type": "array", "maxItems": 8, "nullable": True,
                      "items": {"type": "string", "enum": list(INCLUDABLE)}})
class IncludeField(serializers.ListField):
    """`include`: the schema lists what is accepted; any other value is refused by name (validate_include)."""


class ResponseCreateRequestSerializer(serializers.Serializer):
    # OpenAI's Responses parameters the hub does not implement: refused as "not supported" (apps/core/parameters.py).
    openai_parameters = frozenset({"background", "conversation", "max_tool_calls", "prompt",
                                   "prompt_cache_key", "reasoning", "safety_identifier", "service_tier",
                                   "stream_options", "top_logprobs"})

    model = StrictCharField(required=False, allow_blank=False, max_length=200,
                            help_text='A model id, or "auto" to let the hub choose.')
    input = ResponseInputField(help_text="A string, or a list of message, function_call and "
                                         "function_call_output items.")
    instructions = StrictCharField(required=False, allow_null=True, allow_blank=True,
                                   max_length=settings.AIHUB_MAX_PROMPT_CHARS,
                                   help_text="A system message for this response only; not carried over by "
                                             "previous_response_id.")
    previous_response_id = StrictCharField(required=False, allow_null=True, max_length=64,
                                           help_text="Continue from a stored response of yours.")
    max_output_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stream = StrictBooleanField(required=False, default=False)
    store = StrictBooleanField(required=False, default=True,
                               help_text="The hub stores every response (it is how previous_response_id works); "
                                         "false is accepted and changes nothing.")
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    metadata = MetadataField(required=False, allow_null=True, help_text="Stored with the request, as chat's.")
    tools = ResponseToolSerializer(many=True, required=False)
    tool_choice = ResponseToolChoiceField(required=False, allow_null=True, help_text='"auto", "none", "required" or '
                                                                  '{"type": "function", "name": ...}.')
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True)
    text = TextConfigSerializer(required=False, allow_null=True)
    include = IncludeField(child=StrictCharField(), required=False, allow_null=True, max_length=8,
                           help_text="Extra output to include: file_search_call.results (the chunks the "
                                     "file_search tool found); other OpenAI values are refused by name.")
    truncation = serializers.ChoiceField(choices=["disabled"], required=False, allow_null=True,
                                         help_text='Only "disabled": a prompt too long for the model is a 400.')


    def validate_include(self, value):
        for index, item in enumerate(value or []):
            if item not in INCLUDABLE:
                raise UnsupportedParameter(f"include.{index}", why=f"'{item}' is not something this hub can "
                                                                   f"include; it has {', '.join(INCLUDABLE)}.")
        return value or []

    def validate_tools(self, value):
        if sum(tool["type"] == "file_search" for tool in value) > 1:
            raise serializers.ValidationError("at most one file_search tool (it takes several vector_store_ids).")
        return value


class ResponseObjectSerializer(serializers.Serializer):
    """OpenAI's `response` object, for the schema (objects.py builds it)."""

    id = serializers.CharField()
    object = serializers.CharField(default="response")
    created_at = serializers.IntegerField()
    completed_at = serializers.IntegerField(allow_null=True)
    status = serializers.ChoiceField(choices=["queued", "in_progress", "completed", "incomplete", "failed",
                                              "cancelled"])
    model = serializers.CharField()
    output = serializers.ListField(child=serializers.DictField(), help_text="message and function_call items")
    error = serializers.DictField(allow_null=True)
    incomplete_details = serializers.DictField(allow_null=True)
    instructions = serializers.CharField(allow_null=True)
    max_output_tokens = serializers.IntegerField(allow_null=True)
    temperature = serializers.FloatField(allow_null=True)
    top_p = serializers.FloatField(allow_null=True)
    tools = serializers.ListField(child=serializers.DictField())
    tool_choice = serializers.JSONField()
    parallel_tool_calls = serializers.BooleanField()
    previous_response_id = serializers.CharField(allow_null=True)
    text = serializers.DictField()
    truncation = serializers.CharField()
    metadata = serializers.DictField()
    store = serializers.BooleanField()
    user = serializers.CharField(allow_null=True)
    usage = serializers.DictField(allow_null=True)
    conversation_id = serializers.UUIDField(allow_null=True, help_text="AI Hub extension: the stored conversation.")


class ResponseDeletedSerializer(serializers.Serializer):
    id = serializers.CharField()
    object = serializers.CharField(default="response")
    deleted = serializers.BooleanField()
