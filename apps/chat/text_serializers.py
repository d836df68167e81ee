"""Input shape of the legacy POST /api/v1/completions (OpenAI's text_completion): a raw prompt, no chat template.

Every field OpenAI's API defines is declared, so each is either honoured or
refused by name (400 `unsupported_parameter`), never silently dropped.
"""
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.fields import StrictBooleanField, StrictCharField, StrictFloatField, StrictIntegerField
from apps.core.parameters import UnsupportedParameter

from .serializers import LogitBiasField, StopField, StreamOptionsSerializer

# Prompts in one request (each becomes one choice, generated side by side in the batch).
MAX_PROMPTS = 16
LEGACY_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /completions
MAX_LOGPROBS = 5



@extend_schema_field({"oneOf": [
    {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1},
    {"type": "array", "items": {"type": "integer"}, "minItems": 1},
    {"type": "array", "items": {"type": "array", "items": {"type": "integer"}, "minItems": 1}, "minItems": 1}]})
class PromptField(serializers.Field):
    """A string, a list of strings, a list of token ids, or a list of token-id lists: always a list of prompts.

    Each prompt is a str or a list[int]; the total size is bounded like chat messages.
    """

    default_error_messages = {
        "type": "must be a string, a list of strings, a list of token ids or a list of token-id lists.",
        "empty": "must hold at least one prompt.",
        "count": "at most {count} prompts per request.",
        "size": "the prompts hold {size} characters or tokens; at most {limit} are accepted.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str) or _token_ids(data):
            prompts = [data]
        elif isinstance(data, list) and all(isinstance(p, str) or _token_ids(p) for p in data):
            prompts = data
        else:
            self.fail("type")
        if not prompts:
            self.fail("empty")
        if len(prompts) > MAX_PROMPTS:
            self.fail("count", count=MAX_PROMPTS)
        size = sum(len(p) for p in prompts)
        if size > settings.AIHUB_MAX_PROMPT_CHARS:
            self.fail("size", size=size, limit=settings.AIHUB_MAX_PROMPT_CHARS)
        return prompts

    def to_representation(self, value):
        return value


def _token_ids(value) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


@extend_schema_field({"type": "integer", "minimum": 1, "maximum": 1})
class OnlyOneField(StrictIntegerField):
    """`n` and `best_of`: OpenAI's parameters, of which the hub implements the value 1; others are refused by name."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value != 1:
            raise UnsupportedParameter(self.field_name, why=f"only 1 is supported (not {value}); send a list of "
                                                            "prompts for several choices.")
        return value


class TextCompletionRequestSerializer(serializers.Serializer):
    openai_parameters = frozenset({"suffix"})  # inserting text: refused by name (apps/core/parameters.py)

    model = StrictCharField(required=False, allow_blank=False, max_length=200,
                            help_text='A model id, or "auto" to let the hub choose.')
    prompt = PromptField(help_text="A string, a list of strings (one choice each), or token ids.")
    max_tokens = StrictIntegerField(required=False, allow_null=True, min_value=1,
                                    help_text=f"Default {LEGACY_DEFAULT_MAX_TOKENS}, as OpenAI.")
    temperature = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = StrictFloatField(required=False, allow_null=True, min_value=0, max_value=1)
    stop = StopField(required=False, allow_null=True)
    seed = StrictIntegerField(required=False, allow_null=True)
    stream = StrictBooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    echo = StrictBooleanField(required=False, default=False, help_text="Put the prompt before the completion.")
    user = StrictCharField(required=False, allow_blank=True, max_length=256)
    n = OnlyOneField(required=False, allow_null=True, help_text="1 only: send a list of prompts for several.")
    logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_LOGPROBS,
                                  help_text="Log probabilities of the chosen and up to 5 most likely tokens.")
    best_of = OnlyOneField(required=False, allow_null=True, help_text="1 only.")
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    logit_bias = LogitBiasField(required=False, allow_null=True)

    def validate(self, attrs):
        refusals = {
            "echo": (attrs.get("echo") and any(not isinstance(p, str) for p in attrs["prompt"]),
                     "echo needs text prompts; with token ids the hub cannot show their text."),
        }
        for param, (refused, why) in refusals.items():
            if refused:
                raise UnsupportedParameter(param, why=why)
        return attrs
