"""Shared pieces of the plain async views (DRF views are sync-only): key auth and JSON bodies."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest

from apps.accounts.services import api_key_authenticate, bearer_token

from .errors import AppError, AuthenticationError
from .json_input import JsonInputError, loads_bounded


async def authenticate_request(request: HttpRequest):
    raw = bearer_token(request.headers.get("Authorization"))
    if raw is None:
        raise AuthenticationError("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
    key = await sync_to_async(api_key_authenticate)(raw_key=raw)
    if key is None:
        raise AuthenticationError("Incorrect API key provided, or the key was revoked.")
    return key


async def release_database_connection() -> None:
    """Hand the request's database connection back before a long response.

    Django returns it when the response ends (`request_finished`); a stream or a
    wait for a whole answer lasts seconds to minutes, and would hold one of the
    web process's pooled connections all that time (settings.py, DATABASE_POOL).
    Runs on the request's own thread, which holds the connection.
    """
    await sync_to_async(close_old_connections)()


def parse_json_body(request: HttpRequest) -> dict:
    """The body as a JSON object. Its size was bounded before Django read it (request_size.py)."""
    try:
        body = loads_bounded(request.body or b"", max_depth=settings.AIHUB_MAX_JSON_DEPTH, strict=True)
    except JsonInputError as exc:
        raise AppError(f"We could not parse the JSON body of your request: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise AppError("The request body must be a JSON object.", code="invalid_json")
    return body


def require_method(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise AppError(f"Use {method}.", status=405, code="method_not_allowed")
