"""Input and output of GET /chat/conversations/search (docs/conversation_search.md)."""
from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from rest_framework import serializers

from apps.core.fields import QueryIntegerField

MODES = ("hybrid", "semantic", "text")
MAX_PAGE = 100


class ConversationSearchQuerySerializer(serializers.Serializer):
    # The pattern (something besides spaces) is in the schema too: spaces alone are trimmed to nothing.
    q = serializers.CharField(max_length=settings.AIHUB_CONVERSATION_SEARCH_MAX_QUERY_CHARS,
                              validators=[RegexValidator(r"\S", message="must hold more than spaces.")],
                              help_text="What to look for: words (websearch syntax: \"a phrase\", or, -word) "
                                        "and, by meaning, the whole query.")
    mode = serializers.ChoiceField(choices=MODES, required=False, default="hybrid",
                                   help_text="`hybrid` (both rankers, fused), `semantic` or `text` alone.")
    limit = QueryIntegerField(required=False, default=20, min_value=1, max_value=MAX_PAGE)
    offset = QueryIntegerField(required=False, default=0, min_value=0, max_value=10**6)


class ConversationSearchResultSerializer(serializers.Serializer):
    object = serializers.CharField(default="conversation.search_result")
    conversation_id = serializers.UUIDField()
    conversation_title = serializers.CharField(allow_blank=True)
    message_id = serializers.IntegerField()
    role = serializers.ChoiceField(choices=["user", "assistant"])
    snippet = serializers.CharField(allow_blank=True, help_text="Plain text around the match.")
    highlights = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()),
                                       help_text="[start, end) character ranges of `snippet` that matched words.")
    created_at = serializers.DateTimeField()
    score = serializers.FloatField(help_text="Reciprocal rank fusion score: the sum of 1/(60 + rank).")
    rankers = serializers.ListField(child=serializers.ChoiceField(choices=["semantic", "text"]),
                                    help_text="The rankers that found this message.")


class ConversationSearchListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = ConversationSearchResultSerializer(many=True)
    has_more = serializers.BooleanField()
    rankers = serializers.ListField(child=serializers.ChoiceField(choices=["semantic", "text"]),
                                    help_text="The rankers that ran: without `semantic` when embeddings are off "
                                              "or the query could not be embedded.")
