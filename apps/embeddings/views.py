"""POST /api/v1/embeddings: an async handler of the one pipeline, because the answer waits for a worker.

Thin: the serializer validates, apps/embeddings/services.py decides and queues,
the worker computes (workers/embeddings.py). Errors leave in the one error shape.
"""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import JsonResponse

from apps.core.db import release_database_connection
from apps.core.endpoints import Endpoint, operation
from apps.core.errors import AppError, error_response

from .serializers import EmbeddingRequestSerializer, EmbeddingsListSerializer
from .services import embeddings_body, embeddings_settle, embeddings_submit, embeddings_wait


class EmbeddingsView(Endpoint):
    @operation(operation_id="embeddings_create", request=EmbeddingRequestSerializer,
               responses=EmbeddingsListSerializer, summary="Create embeddings (OpenAI-compatible)",
               errors={403: None, 404: "model_not_found", 429: None, 500: None, 504: None, 507: None})
    async def post(self, request, data):
        job, reservation, _ = await sync_to_async(embeddings_submit)(user=request.user, api_key=request.auth,
                                                                      data=data)
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
