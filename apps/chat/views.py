from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.errors import AppError

from .selectors import conversation_get_with_messages, conversation_list
from .serializers import ConversationDetailSerializer, ConversationListSerializer, ConversationSerializer
from .services import conversation_delete

MAX_PAGE = 100


def _int_param(request, name: str, default: int, *, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise AppError(f"{name} must be an integer.", param=name, code="invalid_value")
    if not low <= value <= high:
        raise AppError(f"{name} must be between {low} and {high}.", param=name, code="invalid_value")
    return value


class ConversationListView(APIView):
    @extend_schema(
        operation_id="conversations_list",
        summary="List your conversations, most recently updated first",
        parameters=[OpenApiParameter("limit", int, description=f"1..{MAX_PAGE}, default 20"),
                    OpenApiParameter("offset", int, description="default 0")],
        responses=ConversationListSerializer,
    )
    def get(self, request):
        limit = _int_param(request, "limit", 20, low=1, high=MAX_PAGE)
        offset = _int_param(request, "offset", 0, low=0, high=10**9)
        queryset = conversation_list(user=request.user)
        total = queryset.count()
        page = list(queryset[offset:offset + limit])
        return Response({
            "object": "list",
            "data": ConversationSerializer(page, many=True).data,
            "has_more": offset + len(page) < total,
            "total": total,
        })


class ConversationDetailView(APIView):
    @extend_schema(summary="A conversation with its messages", responses=ConversationDetailSerializer)
    def get(self, request, conversation_id):
        conversation = conversation_get_with_messages(user=request.user, conversation_id=conversation_id)
        return Response(ConversationDetailSerializer(conversation).data)

    @extend_schema(summary="Delete a conversation and its messages", responses={204: None})
    def delete(self, request, conversation_id):
        conversation_delete(user=request.user, conversation_id=conversation_id)
        return Response(status=204)
