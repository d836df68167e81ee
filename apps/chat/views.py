from asgiref.sync import sync_to_async
from django.http import JsonResponse
from rest_framework import serializers
from rest_framework.response import Response

from apps.audio.chat_input import chat_audio_transcribed
from apps.core.endpoints import Endpoint, operation
from apps.core.fields import QueryIntegerField

from .completions import chat_completion_answer
from .output_serializers import ChatCompletionSerializer, StreamEventSerializer
from .search import conversation_search_answer
from .search_serializers import ConversationSearchListSerializer, ConversationSearchQuerySerializer
from .selectors import conversation_get_with_messages, conversation_list
from .serializers import (
    ChatCompletionRequestSerializer,
    ConversationDetailSerializer,
    ConversationListSerializer,
    ConversationSerializer,
)
from .services import chat_completion_start, conversation_delete
from .text_completions import text_completion_answer
from .text_serializers import TextCompletionRequestSerializer
from .text_services import text_completion_create

MAX_PAGE = 100


class ChatCompletionsView(Endpoint):
    @operation(
        operation_id="chat_completions_create", request=ChatCompletionRequestSerializer,
        summary="Create a chat completion (OpenAI-compatible; SSE when stream is true)",
        description="With `stream: true`, a text/event-stream of chat.completion.chunk objects ending with "
                    "`data: [DONE]` (docs/streaming.md).",
        responses={(200, "application/json"): ChatCompletionSerializer,
                   (200, "text/event-stream"): StreamEventSerializer},
        errors={403: "insufficient_scope: the key lacks inference, or keep_alive -1/0 without an admin key",
                404: "model_not_found, conversation or (retrieval) vector store not found",
                409: "model_not_found: a searched vector store's embedding model left the catalog",
                429: None, 500: None, 503: "queue_full: too many requests wait for a GPU", 504: None, 507: None},
    )
    async def post(self, request, data):
        data = await chat_audio_transcribed(user=request.user, api_key=request.auth, data=data)
        generation = await sync_to_async(chat_completion_start)(user=request.user, api_key=request.auth, data=data)
        return await chat_completion_answer(generation, data)


class TextCompletionsView(Endpoint):
    @operation(
        operation_id="completions_create", request=TextCompletionRequestSerializer,
        summary="Create a text completion (OpenAI's legacy /completions: a raw prompt, no chat template)",
        description="One choice per prompt. With `stream: true`, a text/event-stream of text_completion chunks "
                    "ending with `data: [DONE]` (docs/streaming.md).",
        responses={(200, "application/json"): dict, (200, "text/event-stream"): StreamEventSerializer},
        errors={403: None, 404: "model_not_found", 429: None, 500: None, 503: None, 504: None, 507: None},
    )
    async def post(self, request, data):
        generations = await sync_to_async(text_completion_create)(user=request.user, api_key=request.auth,
                                                                   data=data)
        return await text_completion_answer(generations, data)


class PageQuerySerializer(serializers.Serializer):
    limit = QueryIntegerField(required=False, default=20, min_value=1, max_value=MAX_PAGE)
    offset = QueryIntegerField(required=False, default=0, min_value=0, max_value=10**9)


class ConversationListView(Endpoint):
    @operation(operation_id="conversations_list", query=PageQuerySerializer, responses=ConversationListSerializer,
               summary="List your conversations, most recently updated first")
    def get(self, request, query):
        limit, offset = query["limit"], query["offset"]
        queryset = conversation_list(user=request.user)
        total = queryset.count()
        page = list(queryset[offset:offset + limit])
        return Response({
            "object": "list",
            "data": ConversationSerializer(page, many=True).data,
            "has_more": offset + len(page) < total,
            "total": total,
        })


class ConversationDetailView(Endpoint):
    @operation(summary="A conversation with its messages", responses=ConversationDetailSerializer)
    def get(self, request, conversation_id):
        conversation = conversation_get_with_messages(user=request.user, conversation_id=conversation_id)
        return Response(ConversationDetailSerializer(conversation).data)

    @operation(summary="Delete a conversation and its messages", responses={204: None})
    def delete(self, request, conversation_id):
        conversation_delete(user=request.user, conversation_id=conversation_id)
        return Response(status=204)


class ConversationSearchView(Endpoint):
    @operation(operation_id="conversations_search", query=ConversationSearchQuerySerializer,
               responses=ConversationSearchListSerializer,
               summary="Search your own messages by meaning and by words (docs/conversation_search.md)",
               description="Hybrid by default: embeddings (pgvector, HNSW, cosine) and PostgreSQL full-text "
                           "search, fused by reciprocal rank (k = 60). Pages with `limit` and `offset`.",
               errors={429: None, 503: None, 504: "timeout: the query's embedding (mode semantic only)"})
    async def get(self, request, query):
        return JsonResponse(ConversationSearchListSerializer(
            await conversation_search_answer(user=request.user, api_key=request.auth, query=query)).data)
