"""POST /api/v1/responses (async, as chat completions is: it waits for or streams a generation),
GET and DELETE /api/v1/responses/{id}."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from rest_framework.response import Response

from apps.chat.completions import sse_response, wait_for_completion
from apps.chat.output_serializers import StreamEventSerializer
from apps.core.endpoints import Endpoint, operation

from .objects import response_object, response_stream
from .serializers import ResponseCreateRequestSerializer, ResponseDeletedSerializer, ResponseObjectSerializer
from .services import response_create, response_delete, response_get

NOT_FOUND = "response_not_found: no such response of yours"


class ResponsesView(Endpoint):
    @operation(
        operation_id="responses_create", request=ResponseCreateRequestSerializer,
        summary="Create a response (OpenAI's Responses API; SSE events when stream is true)",
        description="The request runs as a chat completion (docs/api.md#responses). With `stream: true`, a "
                    "text/event-stream of OpenAI's response.* events.",
        responses={(200, "application/json"): ResponseObjectSerializer,
                   (200, "text/event-stream"): StreamEventSerializer},
        errors={403: None, 404: "model_not_found, previous response or (file_search) vector store not found",
                409: "model_not_found: a searched vector store's embedding model left the catalog",
                429: None, 500: None,
                503: "queue_full: too many requests wait for a GPU", 504: None, 507: None},
    )
    async def post(self, request, data):
        generation = await sync_to_async(response_create)(key=request.auth, data=data)
        if data["stream"]:
            response = sse_response(response_stream(generation))
        else:
            response = await wait_for_completion(generation, body=response_object)
        response["X-AIHub-Request-Id"] = str(generation.id)
        return response


class ResponseDetailView(Endpoint):
    @operation(operation_id="responses_retrieve", summary="A stored response", responses=ResponseObjectSerializer,
               errors={404: NOT_FOUND})
    def get(self, request, response_id):
        return Response(response_object(response_get(user=request.user, response_id=response_id)))

    @operation(operation_id="responses_delete", summary="Delete a stored response (its answer leaves its "
               "conversation)", responses={200: ResponseDeletedSerializer}, errors={404: NOT_FOUND})
    def delete(self, request, response_id):
        response_delete(user=request.user, response_id=response_id)
        return Response({"id": response_id, "object": "response", "deleted": True})
