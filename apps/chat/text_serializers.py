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


class TextCompletionRequestSerializer(serializers.Serializer):
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
    n = StrictIntegerField(required=False, allow_null=True, min_value=1, help_text="1 only.")
    logprobs = StrictIntegerField(required=False, allow_null=True, min_value=0, max_value=MAX_LOGPROBS,
                                  help_text="Log probabilities of the chosen and up to 5 most likely tokens.")
    # OpenAI parameters the hub does not implement for /completions: declared so they are refused by name.
    suffix = serializers.JSONField(required=False, allow_null=True, help_text="Not supported: refused.")
    best_of = serializers.JSONField(required=False, allow_null=True, help_text="Only 1: more is refused.")
    presence_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    frequency_penalty = StrictFloatField(required=False, allow_null=True, min_value=-2, max_value=2)
    logit_bias = LogitBiasField(required=False, allow_null=True)

    def validate(self, attrs):
        refusals = {
            "suffix": (attrs.get("suffix") not in (None, ""), "inserting text (a suffix) is not supported."),
            "best_of": (attrs.get("best_of") not in (None, 1), "only best_of 1 is supported."),
            "n": (attrs.get("n") not in (None, 1), "only n 1 is supported; send a list of prompts for several."),
            "echo": (attrs.get("echo") and any(not isinstance(p, str) for p in attrs["prompt"]),
                     "echo needs text prompts; with token ids the hub cannot show their text."),
        }
        for param, (refused, why) in refusals.items():
            if refused:
                raise UnsupportedParameter(param, why=why)
        return attrs
