from __future__ import annotations

from django.db.models import Count

from apps.core.errors import NotFoundError

from .models import Conversation


def conversation_list(*, user):
    # Explicit order: Meta.ordering is not applied to aggregating queries.
    return (Conversation.objects.filter(user=user).annotate(message_count=Count("messages"))
            .order_by("-updated_at", "-created_at"))


def conversation_get(*, user, conversation_id, for_update: bool = False) -> Conversation:
    """The user's conversation; another user's is indistinguishable from a missing one (404)."""
    queryset = Conversation.objects.filter(user=user, id=conversation_id)
    if for_update:
        queryset = queryset.select_for_update()
    conversation = queryset.first()
    if conversation is None:
        raise NotFoundError(f"No conversation with id '{conversation_id}'.", param="conversation_id",
                            code="conversation_not_found")
    return conversation


def conversation_get_with_messages(*, user, conversation_id) -> Conversation:
    conversation = conversation_get(user=user, conversation_id=conversation_id)
    conversation.message_count = conversation.messages.count()
    return conversation
