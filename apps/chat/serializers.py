"""Input and output shapes of the chat API (OpenAI's chat.completion).

Every size a client controls is bounded here (docs/limits.md): messages, their
characters, stop sequences, keep_alive. The body itself was bounded before parsing.
"""
import base64
import json

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.fields import (
    KeepAliveField,
    MetadataField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
)
from workers.constraints import ConstraintError, constraint_grammar

from .models import Conversation, Message, Role
from .retrieval import RetrievalSerializer
from .tools import MAX_TOOL_CALLS_PER_MESSAGE, MAX_TOOL_SCHEMA_CHARS, MAX_TOOLS, TOOL_NAME_PATTERN

ACCEPTED_ROLES = {r.value for r in Role} | {"developer"}  # OpenAI's newer name for system
AUDIO_PART_FORMATS = ("wav", "mp3")  # what OpenAI's input_audio parts take

# Keys OpenAI's chat API defines: one the serializer does not declare is refused as "not supported"
# rather than "unknown" (apps/core/parameters.py). Declaring a field is what makes it accepted.
OPENAI_CHAT_PARAMETERS = frozenset({
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "max_completion_tokens",
    "max_tokens", "messages", "metadata", "modalities", "model", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
OPENAI_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "audio",
                                 "function_call", "annotations"})


_URL_OBJECT = {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}


@extend_schema_field({"oneOf": [
    {"type": "string"},
    {"type": "array", "items": {"oneOf": [
        {"type": "object", "required": ["type", "text"], "properties": {
            "type": {"type": "string", "enum": ["text"]}, "text": {"type": "string"}}},
        {"type": "object", "required": ["type", "image_url"], "properties": {
            "type": {"type": "string", "enum": ["image_url"]}, "image_url": {
                "type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string", "description": "data:image/...;base64,..., file-..., or an allowed URL"},
                    "detail": {"type": "string", "enum": ["auto", "low", "high"]}}}}},
        {"type": "object", "required": ["type", "file"], "properties": {
            "type": {"type": "string", "enum": ["file"]}, "file": {
                "type": "object", "required": ["file_id"], "properties": {"file_id": {"type": "string"}}}}},
        {"type": "object", "required": ["type", "video_url"], "properties": {
            "type": {"type": "string", "enum": ["video_url"]}, "video_url": _URL_OBJECT}},
        {"type": "object", "required": ["type", "input_audio"], "properties": {
            "type": {"type": "string", "enum": ["input_audio"]}, "input_audio": {
                "type": "object", "required": ["data", "format"], "properties": {
                    "data": {"type": "string", "contentEncoding": "base64"},
                    "format": {"type": "string", "enum": list(AUDIO_PART_FORMATS)}}}}},
    ]}},
]})
class MessageContentField(serializers.Field):
    """A string, or a list of content parts: returns {"text": joined text, "images": media part count,
    "parts": the parts in order (None for text only)}, and "audio": [{"at": offset in text, "data": base64,
    "format"}] when there are audio parts.

    Only the shape is checked here; the images and videos themselves are checked and stored by the chat
    service (apps/vision/services.py), which turns each media part's `source` into a stored image id.
    Audio parts are transcribed before the request is stored, and each transcript is put into the text where
    its part was (apps/audio/chat_input.py).
    """

    default_error_messages = {
        "type": "must be a string or a list of content parts.",
        "part": "content parts must be objects with type 'text' and a string 'text', type 'image_url' with an "
                "object 'image_url' holding a string 'url', type 'file' with an object 'file' holding a string "
                "'file_id', type 'video_url' with an object 'video_url' holding a string 'url', or type "
                "'input_audio' with an object 'input_audio'.",
        "unsupported": "content part type '{kind}' is not supported; send 'text', 'image_url', 'file', "
                       "'video_url' or 'input_audio' parts.",
        "detail": "image_url.detail must be 'auto', 'low' or 'high'.",
        "file_data": "file parts take a 'file_id' (upload the image with purpose 'vision'); '{name}' is not supported.",
        "url": "{kind} URLs must be data URLs, file ids (file-...) or http(s) URLs.",
        "audio": "an input_audio part needs base64 'data' and a 'format' of wav or mp3.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            return {"text": data, "images": 0, "parts": None}
        if not isinstance(data, list):
            self.fail("type")
        texts, parts, audio, length = [], [], [], 0
        for part in data:
            if not isinstance(part, dict):
                self.fail("part")
            kind = part.get("type")
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    self.fail("part")
                texts.append(part["text"])
                length += len(part["text"])
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "input_audio":
                audio.append({"at": length, **self._audio(part.get("input_audio"))})
            elif kind == "image_url":
                image = self._object(part, "image_url")
                detail = image.get("detail") or "auto"
                if detail not in ("auto", "low", "high"):
                    self.fail("detail")
                parts.append({"type": "image", "source": self._source(image["url"], "image"), "detail": detail})
            elif kind == "file":
                file = part.get("file")
                if isinstance(file, dict) and set(file) - {"file_id"}:
                    self.fail("file_data", name=sorted(set(file) - {"file_id"})[0])
                if not (isinstance(file, dict) and isinstance(file.get("file_id"), str)):
                    self.fail("part")
                parts.append({"type": "image", "source": {"file_id": file["file_id"]}, "detail": "auto"})
            elif kind == "video_url":
                video = self._object(part, "video_url")
                parts.append({"type": "video", "source": self._source(video["url"], "video")})
            else:
                self.fail("unsupported", kind=kind)
        media = sum(1 for part in parts if part["type"] != "text")
        content = {"text": "".join(texts), "images": media, "parts": parts if media else None}
        return {**content, "audio": audio} if audio else content

    def _audio(self, value) -> dict:
        if not isinstance(value, dict) or value.get("format") not in AUDIO_PART_FORMATS \
                or not isinstance(value.get("data"), str) or set(value) - {"data", "format"}:
            self.fail("audio")
        try:
            base64.b64decode(value["data"], validate=True)
        except ValueError:
            self.fail("audio")
        return {"data": value["data"], "format": value["format"]}

    def _object(self, part: dict, key: str) -> dict:
        value = part.get(key)
        if not (isinstance(value, dict) and isinstance(value.get("url"), str)):
            self.fail("part")
        return value

    def _source(self, url: str, kind: str) -> dict:
        if url.startswith("file-"):
            return {"file_id": url}
        if not url.startswith(("data:", "http://", "https://")):
            self.fail("url", kind=kind.capitalize())
        return {"url": url}

    def to_representation(self, value):
        return value


@extend_schema_field({"type": "string", "enum": sorted(ACCEPTED_ROLES)})
class RoleField(StrictCharField):
    """A message's role; the schema lists the accepted ones."""


class FunctionCallSerializer(serializers.Serializer):
    name = serializers.RegexField(TOOL_NAME_PATTERN, help_text="The function called.")
    arguments = StrictCharField(allow_blank=True, trim_whitespace=False, max_length=MAX_TOOL_SCHEMA_CHARS,
                                help_text="Its arguments, a JSON object as text.")


class ToolCallInputSerializer(serializers.Serializer):
    """An assistant message's earlier tool call, as the API returned it."""

    id = StrictCharField(max_length=64)
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionCallSerializer()


class ChatMessageInputSerializer(serializers.Serializer):
    openai_parameters = OPENAI_MESSAGE_KEYS

    role = RoleField()
    content = MessageContentField(required=False, allow_null=True,
                                  help_text="May be null (or left out) in an assistant message with tool_calls.")
    name = StrictCharField(required=False, max_length=64)
    tool_calls = ToolCallInputSerializer(many=True, required=False, allow_null=True,
                                         max_length=MAX_TOOL_CALLS_PER_MESSAGE,
                                         help_text="An assistant message's tool calls.")
    tool_call_id = StrictCharField(required=False, max_length=64, help_text="The call a tool message answers.")

    def validate(self, attrs):
        content = attrs.pop("content", None)
        role, tool_calls = attrs["role"], attrs.get("tool_calls")
        if tool_calls and role != Role.ASSISTANT:
            raise serializers.ValidationError({"tool_calls": "only assistant messages have tool_calls."})
        if role == Role.TOOL and not attrs.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": "a tool message names the call it answers."})
        if role != Role.TOOL and attrs.get("tool_call_id"):
            raise serializers.ValidationError({"tool_call_id": "only tool messages have a tool_call_id."})
        if content is None and not tool_calls:
            raise serializers.ValidationError({"content": "This field is required."})
        content = content or {"text": "", "images": 0, "parts": None}
        audio = {"audio": content["audio"]} if content.get("audio") else {}
        return {**attrs, "content": content["text"], "images": content["images"], "parts": content["parts"], **audio}

    def validate_role(self, value):
        if value not in ACCEPTED_ROLES:
            raise serializers.ValidationError(
                f"unknown role '{value}'; expected one of system, developer, user, assistant, tool.")
        return Role.SYSTEM.value if value == "developer" else value


class FunctionDefinitionSerializer(serializers.Serializer):
    name = serializers.RegexField(TOOL_NAME_PATTERN, help_text="Letters, digits, _ and -, at most 64.")
    description = StrictCharField(required=False, allow_blank=True, max_length=MAX_TOOL_SCHEMA_CHARS)
    parameters = serializers.DictField(required=False, help_text="A JSON schema of the arguments object.")
    strict = StrictBooleanField(required=False, allow_null=True,
                                help_text="Accepted; forced calls are always generated under the schema.")

    def validate_parameters(self, value):
        if len(json.dumps(value)) > MAX_TOOL_SCHEMA_CHARS:
            raise serializers.ValidationError(f"at most {MAX_TOOL_SCHEMA_CHARS} characters of JSON.")
        return value


class ToolSerializer(serializers.Serializer):
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionDefinitionSerializer()


@extend_schema_field({"oneOf": [
    {"type": "string", "enum": ["auto", "none", "required"]},
    {"type": "object", "required": ["type", "function"], "additionalProperties": False, "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}]})
class ToolChoiceField(serializers.Field):
    """"auto", "none", "required", or {"type": "function", "function": {"name": ...}}."""

    default_error_messages = {
        # Braces doubled: DRF formats these messages with str.format.
        "type": "must be 'auto', 'none', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}.",
    }

    def to_internal_value(self, data):
        if data in ("auto", "none", "required"):
            return data
        if (isinstance(data, dict) and data.get("type") == "function" and isinstance(data.get("function"), dict)
                and isinstance(data["function"].get("name"), str) and set(data) == {"type", "function"}):
            return {"type": "function", "function": {"name": data["function"]["name"]}}
        self.fail("type")

    def to_representation(self, value):
        return value


class StreamOptionsSerializer(serializers.Serializer):
    openai_parameters = frozenset({"include_usage", "include_obfuscation"})

    include_usage = StrictBooleanField(required=False, default=False)


# The schema states the bounds the field enforces (schemathesis sent five stops, valid by a schema without them).
@extend_schema_field({"oneOf": [{"type": "string", "maxLength": settings.AIHUB_MAX_STOP_CHARS},
                                {"type": "array", "maxItems": settings.AIHUB_MAX_STOP_SEQUENCES,
                                 "items": {"type": "string", "minLength": 1,
                                           "maxLength": settings.AIHUB_MAX_STOP_CHARS}}],
                     "nullable": True})
class StopField(serializers.Field):
    default_error_messages = {
        "type": "must be a string or a list of up to {count} non-empty strings.",
        "length": "each stop sequence may have at most {chars} characters.",
    }

    def to_internal_value(self, data):
        count, chars = settings.AIHUB_MAX_STOP_SEQUENCES, settings.AIHUB_MAX_STOP_CHARS
        if data is None:
            return []
        stops = ([data] if data else []) if isinstance(data, str) else data
        if not (isinstance(stops, list) and len(stops) <= count and all(isinstance(s, str) and s for s in stops)):
            self.fail("type", count=count)
        if any(len(s) > chars for s in stops):
            self.fail("length", chars=chars)
        return stops

    def to_representation(self, value):
        return value


@extend_schema_field({"type": "object", "maxProperties": 300, "description": "token id (digits) -> bias",
                      "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}})
class LogitBiasField(serializers.Field):
    """OpenAI's logit_bias: token ids (as strings) to a bias from -100 to 100, at most 300 entries.

    Whether an id is inside the model's vocabulary is checked by the worker, which has the model loaded.
    """

    MAX_ENTRIES = 300
    default_error_messages = {
        "type": "must be an object mapping token ids (strings of digits) to numbers from -100 to 100.",
        "size": "may hold at most {count} tokens.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("type")
        if len(data) > self.MAX_ENTRIES:
            self.fail("size", count=self.MAX_ENTRIES)
        bias = {}
        for token, value in data.items():
            if not (token.isascii() and token.isdigit() and len(token) <= 9) or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or not -100 <= value <= 100:
                self.fail("type")
            bias[str(int(token))] = float(value)
        return bias
RESPONSE_FORMAT_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
        "json_schema": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"},
            "description": {"type": "string"},
            "schema": {"type": "object", "additionalProperties": True},
            "strict": {"type": "boolean", "nullable": True}}},
    },
    "description": "Structured outputs, enforced by constrained decoding (docs/api.md).",
}


@extend_schema_field(RESPONSE_FORMAT_SCHEMA)
class ResponseFormatField(serializers.Field):
    """OpenAI's response_format, as the engine's constraint (workers/constraints.py): None for plain text.

    The schema is compiled here, without a tokenizer (the grammar library needs none, and no torch), so an
    invalid or unsupported schema is refused before anything is stored.
    """

    default_error_messages = {
        "type": "must be an object with type 'text', 'json_object' or 'json_schema'.",
        "json_schema": "json_schema must be an object with a 'name' (letters, digits, '_' and '-', at most 64) "
                       "and a 'schema' object; 'description' is a string and 'strict' a boolean.",
        "schema": "json_schema.schema cannot be enforced: {error}",
    }

    def to_internal_value(self, data):
        if not isinstance(data, dict) or data.get("type") not in ("text", "json_object", "json_schema"):
            self.fail("type")
        if data["type"] == "text":
            return None
        if data["type"] == "json_object":
            return {"type": "json_object"}
        spec = data.get("json_schema")
        if not (isinstance(spec, dict) and _valid_schema_name(spec.get("name"))
                and isinstance(spec.get("schema", {}), dict) and isinstance(spec.get("description", ""), str)
                and isinstance(spec.get("strict", False), (bool, type(None)))):
            self.fail("json_schema")
        # No schema: OpenAI's default, any JSON object.
        constraint = {"type": "json_schema", "schema": spec["schema"]} if "schema" in spec else {"type": "json_object"}
        try:
            constraint_grammar(constraint)
        except ConstraintError as exc:
            self.fail("schema", error=exc)
        return constraint

    def to_representation(self, value):
        return value


def _valid_schema_name(name) -> bool:
    return isinstance(name, str) and 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-")
                                                                 for c in name)


class ChatCompletionRequestSerializer(serializers.Serializer):
    openai_parameters = OPENAI_CHAT_PARAMETERS

    model = StrictCharField(required=False, allow_blank=False, max_length=200,  # ModelEntry.id
                            help_text='A model id, or "auto" to let the hub choose.')
    messages = ChatMessageInputSerializer(many=True, allow_empty=False, max_length=settings.AIHUB_MAX_MESSAGES)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    max_completion_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1)
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(required=False, allow_null=True, min_value=-2**63, max_value=2**63 - 1)
    user = StrictCharField(required=False, allow_blank=True, max_length=256,
                           help_text="Your end user's id; recorded with the request for analytics.")
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=settings.AIHUB_MAX_N,
                           help_text="How many choices to generate (AIHUB_MAX_N at most).")
    logprobs = StrictBooleanField(required=False, allow_null=True,
                                  help_text="Return the log probability of each generated token.")
    top_logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=20,
                                      help_text="With logprobs: this many most likely alternatives per token.")
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    logit_bias = LogitBiasField(required=False, allow_null=True)
    metadata = MetadataField(required=False, allow_null=True, help_text="Stored with the request (admin).")
    store = StrictBooleanField(required=False, allow_null=True,
                               help_text="Accepted; the hub stores every completion (docs/api.md).")
    keep_alive = KeepAliveField(
        bound=settings.AIHUB_KEEP_ALIVE_MAX_SECONDS, required=False, allow_null=True,
        help_text="Seconds the model stays loaded after this request, up to the operator's bound "
                  "(AIHUB_KEEP_ALIVE_MAX_SECONDS); -1 pins and 0 unloads, with an admin key only.")
    cache = StrictBooleanField(required=False, allow_null=True, default=None,
                               help_text="Answer deterministic requests from the response cache (per user).")
    response_format = ResponseFormatField(
        required=False, allow_null=True, default=None,
        help_text="{'type': 'text' | 'json_object' | 'json_schema', 'json_schema': {'name', 'schema', ...}}: "
                  "the answer is one JSON object, or one that validates against the schema (docs/api.md).")
    ignore_eos = StrictBooleanField(required=False, default=False,
                                    help_text="vLLM extension: generate exactly max_tokens tokens (benchmarks).")
    conversation_id = serializers.UUIDField(required=False, allow_null=True,
                                            help_text="AI Hub extension: continue a stored conversation.")
    tools = ToolSerializer(many=True, required=False, allow_null=True, max_length=MAX_TOOLS,
                           help_text="Functions the model may call (docs/api.md, Tool calling).")
    tool_choice = ToolChoiceField(required=False, allow_null=True,
                                  help_text='"auto" (default with tools), "none", "required", or a named function.')
    parallel_tool_calls = StrictBooleanField(required=False, allow_null=True,
                                             help_text="Whether an answer may hold several calls (default true).")
    retrieval = RetrievalSerializer(required=False, allow_null=True,
                                    help_text="AI Hub extension: search your vector stores with the last user "
                                              "message and put the chunks into the prompt "
                                              "(docs/vector_stores.md, Retrieval in chat).")

    def validate_messages(self, value):
        chars = sum(len(m["content"]) for m in value)
        if chars > settings.AIHUB_MAX_PROMPT_CHARS:
            raise serializers.ValidationError(
                f"the messages hold {chars} characters; at most {settings.AIHUB_MAX_PROMPT_CHARS} are accepted.")
        media = sum(m["images"] for m in value)
        if media > settings.AIHUB_VISION_MAX_IMAGES:
            raise serializers.ValidationError(
                f"the messages hold {media} images and videos; at most {settings.AIHUB_VISION_MAX_IMAGES} are "
                "accepted (AIHUB_VISION_MAX_IMAGES).")
        return value

    def validate(self, attrs):
        if attrs.get("top_logprobs") is not None and not attrs.get("logprobs"):
            raise serializers.ValidationError({"top_logprobs": "top_logprobs needs logprobs set to true."})
        if attrs.get("max_tokens") and attrs.get("max_completion_tokens"):
            if attrs["max_tokens"] != attrs["max_completion_tokens"]:
                raise serializers.ValidationError(
                    {"max_tokens": "give max_tokens or max_completion_tokens, not two different values."})
        attrs["max_tokens"] = attrs.pop("max_completion_tokens", None) or attrs.get("max_tokens")
        self._validate_tools(attrs)
        return attrs

    def _validate_tools(self, attrs) -> None:
        names = [tool["function"]["name"] for tool in attrs.get("tools") or []]
        if len(set(names)) != len(names):
            raise serializers.ValidationError({"tools": "each function needs a name of its own."})
        choice = attrs.get("tool_choice")
        if choice not in (None, "auto", "none") and not names:
            raise serializers.ValidationError({"tool_choice": "tool_choice needs tools."})
        if isinstance(choice, dict) and choice["function"]["name"] not in names:
            raise serializers.ValidationError(
                {"tool_choice": f"the function '{choice['function']['name']}' is not one of the tools."})


class MessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "role", "content", "tool_calls", "tool_call_id", "retrieval", "created_at"]


class ConversationSerializer(serializers.ModelSerializer):
    object = serializers.SerializerMethodField()
    message_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Conversation
        fields = ["id", "object", "title", "model", "created_at", "updated_at", "message_count"]

    def get_object(self, obj) -> str:
        return "conversation"


class ConversationDetailSerializer(ConversationSerializer):
    messages = MessageSerializer(many=True, read_only=True)

    class Meta(ConversationSerializer.Meta):
        fields = ConversationSerializer.Meta.fields + ["messages"]


class ConversationListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ConversationSerializer(many=True)
    has_more = serializers.BooleanField()
    total = serializers.IntegerField()
