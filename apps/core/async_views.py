"""Shared pieces of the plain async views (DRF views are sync-only): key auth and JSON bodies."""
from __future__ import annotations

import json

from asgiref.sync import sync_to_async
from django.http import HttpRequest

from apps.accounts.services import api_key_authenticate, bearer_token

from .errors import AppError, AuthenticationError


async def authenticate_request(request: HttpRequest):
    raw = bearer_token(request.headers.get("Authorization"))
    if raw is None:
        raise AuthenticationError("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
    key = await sync_to_async(api_key_authenticate)(raw_key=raw)
    if key is None:
        raise AuthenticationError("Incorrect API key provided, or the key was revoked.")
    return key


def parse_json_body(request: HttpRequest) -> dict:
    try:
        body = json.loads(request.body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise AppError(f"We could not parse the JSON body of your request: {exc}", code="invalid_json")
    if not isinstance(body, dict):
        raise AppError("The request body must be a JSON object.", code="invalid_json")
    return body


def require_method(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise AppError(f"Use {method}.", status=405, code="method_not_allowed")
