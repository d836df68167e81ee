"""JSON-strict serializer fields: DRF would quietly turn 5 into "5" and "yes" into True."""
import re

from drf_spectacular.drainage import set_override
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers


class StrictCharField(serializers.CharField):
    default_error_messages = {"type": "must be a string."}

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("type")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"type": "must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("type")
        return data


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"type": "must be an integer."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("type")
        return super().to_internal_value(data)


class QueryIntegerField(serializers.IntegerField):
    """An integer in a query string, written as one: DRF's IntegerField also takes "2.0" and " 2", which the
    schema (type integer) does not allow and OpenAI's API refuses."""

    default_error_messages = {"type": "must be an integer."}

    def to_internal_value(self, data):
        if not (isinstance(data, str) and re.fullmatch(r"-?[0-9]+", data)):
            self.fail("type")
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"type": "must be a number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("type")
        return super().to_internal_value(data)


class KeepAliveField(StrictFloatField):
    """Seconds a model stays loaded while idle: -1 pins it, 0 unloads it after the request, or up to `bound`.

    Any other negative number is refused rather than read as a pin: a pinned model can only leave by an explicit
    unload, so pinning must be asked for by its one documented value.
    """

    default_error_messages = {"range": "seconds {bound}, or -1 to pin the model (admin keys only)."}

    def __init__(self, *, bound: float | None = None, **kwargs):
        self.bound = bound
        super().__init__(**kwargs)
        positive = {"type": "number", "exclusiveMinimum": True, "minimum": 0}
        if bound is not None:
            positive["maximum"] = bound
        set_override(self, "field", {"oneOf": [{"type": "number", "enum": [-1, 0]}, positive], "nullable": True})

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if value in (-1, 0) or (value > 0 and (self.bound is None or value <= self.bound)):
            return value
        self.fail("range", bound=f"between 0 and {self.bound:g}" if self.bound is not None else "above 0")


@extend_schema_field({"type": "object", "maxProperties": 16, "description": "keys of 1 to 64 characters",
                      "additionalProperties": {"type": "string", "maxLength": 512}})
class MetadataField(serializers.Field):
    """OpenAI's metadata: up to 16 string pairs, keys of at most 64 characters, values of at most 512."""

    default_error_messages = {
        "type": "must be an object of at most 16 string keys (64 characters each) with string values (512 each).",
    }

    def to_internal_value(self, data):
        if not (isinstance(data, dict) and len(data) <= 16 and all(
                isinstance(key, str) and 0 < len(key) <= 64 and isinstance(value, str) and len(value) <= 512
                for key, value in data.items())):
            self.fail("type")
        return data

    def to_representation(self, value):
        return value
