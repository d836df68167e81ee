"""Parameters are honoured or refused: a key no serializer declares is a 400 naming it.

DRF drops keys a serializer does not declare, so a client asking for something
the hub does not do (`tools` before they existed, a typo such as `max_token`)
got an answer as if it had not asked. Here the declared fields are the list of
what an endpoint accepts: declaring a field on the serializer is what makes a
parameter accepted, here and in the OpenAPI schema (apps/core/openapi.py).

A serializer may name, in `openai_parameters`, the keys OpenAI's API defines
at its level that the hub does not (yet) implement: the error then says so
rather than "unknown". Such a key sent as `null` is let through, because null
is OpenAI's "not given" and clients send it back unchanged (an assistant
message from a response, appended to the history, carries `refusal: null`).
"""
from __future__ import annotations

from rest_framework import serializers

from .errors import AppError


class UnsupportedParameter(AppError):
    """A parameter the hub refuses by name; `why` replaces the generic reason (a value not implemented)."""

    def __init__(self, param: str, *, openai: bool = True, why: str | None = None):
        if why:
            message = f"{param}: {why}"
        elif openai:
            message = f"{param}: this OpenAI parameter is not supported by this hub (docs/api.md lists what is)."
        else:
            message = f"{param}: unknown parameter (docs/api.md lists the parameters and the hub's extensions)."
        super().__init__(message, param=param, code="unsupported_parameter")


def refuse_undeclared(serializer: serializers.BaseSerializer, data, path: str = "") -> None:
    """Raise UnsupportedParameter for the first key in `data` that `serializer` (or a nested one) does not declare.

    Only shapes that match are walked: a list where an object belongs is left to
    the serializer's own validation, which gives the better message.
    """
    if isinstance(serializer, serializers.ListSerializer):
        if isinstance(data, list):
            for index, item in enumerate(data):
                refuse_undeclared(serializer.child, item, f"{path}.{index}" if path else str(index))
        return
    if not isinstance(serializer, serializers.Serializer) or not isinstance(data, dict):
        return
    fields = serializer.fields
    known_elsewhere = getattr(serializer, "openai_parameters", frozenset())
    for key, value in data.items():
        name = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None or field.read_only:
            if key in known_elsewhere and value is None:
                continue
            raise UnsupportedParameter(name, openai=key in known_elsewhere)
        refuse_undeclared(field, value, name)
