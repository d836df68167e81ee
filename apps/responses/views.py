"""POST /api/v1/responses (async, as chat completions is: it waits for or streams a generation),
GET and DELETE /api/v1/responses/{id}."""
from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import HttpRequest, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.chat.completions import wait_for_completion
from apps.core.async_views import authenticate_request, parse_json_body, require_method
from apps.core.errors import AppError, as_app_error, error_response

from .objects import response_object, response_stream
from .serializers import ResponseCreateRequestSerializer
from .services import response_create, response_delete, response_get


def _validate_and_create(*, key, body: dict):
    serializer = ResponseCreateRequestSerializer(data=body)
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError as exc:
        raise as_app_error(exc)
    return response_create(key=key, data=serializer.validated_data)


@csrf_exempt
async def responses_view(request: HttpRequest):
    try:
        require_method(request, "POST")
        key = await authenticate_request(request)
        body = await sync_to_async(parse_json_body)(request)
        generation = await sync_to_async(_validate_and_create)(key=key, body=body)
    except AppError as error:
        return error_response(error)
    if generation.params.get("response") is not None and body.get("stream") is True:
        response = StreamingHttpResponse(response_stream(generation), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
    else:
        response = await wait_for_completion(generation, body=response_object)
    response["X-AIHub-Request-Id"] = str(generation.id)
    return response


class ResponseDetailView(APIView):
    @extend_schema(summary="A stored response", responses={200: dict})
    def get(self, request, response_id):
        return Response(response_object(response_get(user=request.user, response_id=response_id)))

    @extend_schema(summary="Delete a stored response (its answer leaves its conversation)", responses={200: dict})
    def delete(self, request, response_id):
        response_delete(user=request.user, response_id=response_id)
        return Response({"id": response_id, "object": "response", "deleted": True})
