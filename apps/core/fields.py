"""JSON-strict serializer fields: DRF would quietly turn 5 into "5" and "yes" into True."""
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


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"type": "must be a number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("type")
        return super().to_internal_value(data)


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
