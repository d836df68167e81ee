"""The OpenAPI description, generated from what the pipeline runs (endpoints.py), never kept by hand.

drf-spectacular reads each operation's serializers; this schema class adds
what the pipeline itself guarantees, so that every status code an endpoint
can answer is documented with the one error shape (the `Error` component):
400 where there is input, 413 where there is a body, 401/403 where a key is
needed, 404 where the path names an object, and each operation's own
`errors`. Request bodies are closed (`additionalProperties: false`) because a
key no serializer declares is refused (parameters.py).
"""
from __future__ import annotations

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny


class ErrorObjectSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, permission_error, "
                                           "rate_limit_error, insufficient_quota, server_error, ...")
    param = serializers.CharField(allow_null=True, help_text="The parameter at fault, as a dotted path.")
    code = serializers.CharField(allow_null=True, help_text="A stable machine-readable code.")


class ErrorSerializer(serializers.Serializer):
    """OpenAI's error shape, the body of every error response."""

    error = ErrorObjectSerializer()

    class Meta:
        ref_name = "Error"


ERROR_DESCRIPTIONS = {
    400: "invalid_request_error: a parameter is invalid (invalid_value), not accepted by this endpoint "
         "(unsupported_parameter), or the body is not a JSON object (invalid_json)",
    401: "authentication_error: missing, wrong, expired or revoked API key",
    403: "permission_error: the key lacks the scope this endpoint needs (insufficient_scope), or the "
         "object is not yours to change",
    404: "not found: no such object, or one you may not see (the two are indistinguishable)",
    405: "method_not_allowed",
    409: "conflict: the object is not in a state that allows this",
    413: "request_too_large: the body exceeds the hub's size limit (docs/limits.md)",
    429: "rate_limit_error or insufficient_quota: the key's limits (docs/limits.md); see Retry-After",
    500: "server_error: the worker failed on this request",
    503: "server_error: no worker can take the request now",
    504: "server_error: the worker did not answer in time",
    507: "server_error: the model does not fit in the memory left on any worker (insufficient_memory)",
}


def error_response(status: int, description: str | None = None) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description or ERROR_DESCRIPTIONS.get(status, "error"))


class AutoSchema(SpectacularAutoSchema):
    def get_tags(self):
        tags = super().get_tags()
        return ["monitoring" if tags == ["health"] else self.view.__module__.split(".")[1]] \
            if self.view.__module__.startswith("apps.") and tags in (["api"], ["health"]) else tags

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for status, description in self._error_statuses().items():
            current = responses.get(str(status))
            if current is not None and current.get("content"):
                continue  # the operation documents this answer with its own body
            description = description or (current or {}).get("description") or None
            responses[str(status)] = self._get_response_for_code(error_response(status, description), str(status),
                                                                  direction=direction)
        return dict(sorted(responses.items()))

    def _error_statuses(self) -> dict[int, str | None]:
        handler = getattr(self.view, self.method.lower(), None)
        inputs = getattr(handler, "operation_input", {})
        has_body = inputs.get("body") is not None or (
            self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None)
        statuses: dict[int, str | None] = {}
        if has_body or inputs.get("query") is not None:
            statuses[400] = None
        if has_body:
            statuses[413] = None
        if self._needs_key():
            statuses[401] = None
            if getattr(self.view, "required_scope", "") is not None:
                statuses[403] = None
        if "{" in self.path:
            statuses[404] = None
        statuses.update(getattr(handler, "operation_errors", {}))
        return statuses

    def _needs_key(self) -> bool:
        return bool(self.view.authentication_classes) and any(
            permission is not AllowAny for permission in self.view.permission_classes)

    def _map_serializer_field(self, field, direction, bypass_extensions=False):
        schema = super()._map_serializer_field(field, direction, bypass_extensions)
        # spectacular leaves out a list's allow_empty=False and a nested list's max_length.
        if isinstance(field, (serializers.ListSerializer, serializers.ListField)) and schema.get("type") == "array":
            if not field.allow_empty:
                schema["minItems"] = max(1, schema.get("minItems", 0))
            if getattr(field, "max_length", None) is not None and "maxItems" not in schema:
                schema["maxItems"] = field.max_length
        return schema

    def _postprocess_serializer_schema(self, schema, serializer, direction):
        schema = super()._postprocess_serializer_schema(schema, serializer, direction)
        if direction == "request" and "properties" in schema:
            schema["additionalProperties"] = False
        return schema
