"""POST /api/v1/embeddings: an async view, as chat completions, because the answer waits for a worker.

Thin: the serializer validates, apps/embeddings/services.py decides and queues,
the worker computes (workers/embeddings.py). Errors leave in the one error shape.
"""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ValidationError

from apps.accounts.models import Scope
from apps.accounts.services import require_scope
from apps.core.async_views import authenticate_request, parse_json_body, release_database_connection, require_method
from apps.core.errors import AppError, as_app_error, error_response

from .serializers import EmbeddingRequestSerializer
from .services import embeddings_body, embeddings_settle, embeddings_submit, embeddings_wait


def _validate_and_submit(*, key, body: dict):
    serializer = EmbeddingRequestSerializer(data=body)
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError as exc:
        raise as_app_error(exc)
    data = serializer.validated_data
    return (*embeddings_submit(user=key.user, api_key=key, data=data), data)


@csrf_exempt
async def embeddings_view(request: HttpRequest):
    try:
        require_method(request, "POST")
        key = await authenticate_request(request)
        require_scope(key, Scope.INFERENCE)
        body = await sync_to_async(parse_json_body)(request)
        job, reservation, _, data = await sync_to_async(_validate_and_submit)(key=key, body=body)
    except AppError as error:
        return error_response(error)
    reply, succeeded = None, False
    try:
        await release_database_connection()
        reply = await embeddings_wait(job)
        succeeded = True
        return JsonResponse(embeddings_body(job=job, reply=reply, encoding_format=data["encoding_format"]))
    except AppError as error:
        return error_response(error)
    finally:
        await sync_to_async(embeddings_settle)(job=job, reservation=reservation, succeeded=succeeded,
                                               prompt_tokens=reply["prompt_tokens"] if reply else 0)
