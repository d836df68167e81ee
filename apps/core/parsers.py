"""DRF's JSON parser, bounded: deep nesting is a 400, never a RecursionError (a 500).

The body's size is bounded before this runs (apps/core/request_size.py).
"""
from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from .errors import as_app_error
from .json_input import JsonInputError, JsonTextError, loads_bounded


class BoundedJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            return loads_bounded(raw, max_depth=settings.AIHUB_MAX_JSON_DEPTH, strict=True)
        except JsonTextError as exc:
            raise as_app_error(exc) from None
        except JsonInputError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
