"""Input and output shapes of the chat API (OpenAI's chat.completion).

Every size a client controls is bounded here (docs/limits.md): messages, their
characters, stop sequences, keep_alive. The body itself was bounded before parsing.
"""
import json

from django.conf import settings
from rest_framework import serializers

from apps.core.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField

from .models import Conversation, Message, Role
from .tools import MAX_TOOL_CALLS_PER_MESSAGE, MAX_TOOL_SCHEMA_CHARS, MAX_TOOLS, TOOL_NAME_PATTERN

ACCEPTED_ROLES = {r.value for r in Role} | {"developer"}  # OpenAI's newer name for system


class MessageContentField(serializers.Field):
    """A string, or a list of content parts: returns {"text": joined text, "images": image part count}.

    Image parts are counted (they make `model: auto` pick a vision model) but not
    yet passed to a model: a request with images is refused after routing.
    """

    default_error_messages = {
        "type": "must be a string or a list of content parts.",
        "part": "content parts must be objects with type 'text' and a string 'text', or type 'image_url'.",
        "unsupported": "content part type '{kind}' is not supported; send 'text' or 'image_url' parts.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            return {"text": data, "images": 0}
        if not isinstance(data, list):
            self.fail("type")
        texts, images = [], 0
        for part in data:
            if not isinstance(part, dict):
                self.fail("part")
            kind = part.get("type")
            if kind == "image_url":
                images += 1
                continue
            if kind != "text":
                self.fail("unsupported", kind=kind)
            if not isinstance(part.get("text"), str):
                self.fail("part")
            texts.append(part["text"])
        return {"text": "".join(texts), "images": images}

    def to_representation(self, value):
        return value


def _type_function(value: str) -> str:
    if value != "function":
        raise serializers.ValidationError("must be 'function'.")
    return value


class FunctionCallSerializer(serializers.Serializer):
    name = serializers.RegexField(TOOL_NAME_PATTERN, help_text="The function called.")
    arguments = StrictCharField(allow_blank=True, trim_whitespace=False, max_length=MAX_TOOL_SCHEMA_CHARS,
                                help_text="Its arguments, a JSON object as text.")


class ToolCallInputSerializer(serializers.Serializer):
    """An assistant message's earlier tool call, as the API returned it."""

    id = StrictCharField(max_length=64)
    type = StrictCharField(validators=[_type_function])
    function = FunctionCallSerializer()


class ChatMessageInputSerializer(serializers.Serializer):
    role = StrictCharField()
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
        content = content or {"text": "", "images": 0}
        return {**attrs, "content": content["text"], "images": content["images"]}

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
    type = StrictCharField(validators=[_type_function])
    function = FunctionDefinitionSerializer()


class ToolChoiceField(serializers.Field):
    """"auto", "none", "required", or {"type": "function", "function": {"name": ...}}."""

    default_error_messages = {
        "type": "must be 'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
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
    include_usage = StrictBooleanField(required=False, default=False)


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


class ChatCompletionRequestSerializer(serializers.Serializer):
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
    seed = StrictIntegerField(required=False, allow_null=True)
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    n = StrictIntegerField(required=False, allow_null=True)
    keep_alive = StrictFloatField(
        required=False, allow_null=True,
        help_text="Seconds the model stays loaded after this request, up to the operator's bound "
                  "(AIHUB_KEEP_ALIVE_MAX_SECONDS); -1 pins and 0 unloads, with an admin key only.")
    cache = StrictBooleanField(required=False, allow_null=True, default=None,
                               help_text="Answer deterministic requests from the response cache (per user).")
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

    def validate_messages(self, value):
        chars = sum(len(m["content"]) for m in value)
        if chars > settings.AIHUB_MAX_PROMPT_CHARS:
            raise serializers.ValidationError(
                f"the messages hold {chars} characters; at most {settings.AIHUB_MAX_PROMPT_CHARS} are accepted.")
        return value

    def validate_keep_alive(self, value):
        bound = settings.AIHUB_KEEP_ALIVE_MAX_SECONDS
        if value is not None and value not in (-1, 0) and not 0 < value <= bound:
            raise serializers.ValidationError(
                f"seconds between 0 and {bound:g}, or -1 to pin the model (admin keys only).")
        return value

    def validate_n(self, value):
        if value not in (None, 1):
            raise serializers.ValidationError("only n=1 is supported.")
        return value

    def validate(self, attrs):
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
        fields = ["id", "role", "content", "tool_calls", "tool_call_id", "created_at"]


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
