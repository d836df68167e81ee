from __future__ import annotations

from datetime import timedelta

from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from apps.core.errors import NotFoundError

from .models import Conversation, GenerationRequest


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


def model_performance(*, model_ids: list[str], window_hours: int = 24) -> dict[str, tuple[float, float | None]]:
    """Per model over the window: (error rate, ms per generated token), from stored requests."""
    State = GenerationRequest.State
    succeeded = Q(state=State.SUCCEEDED, completion_tokens__gt=0, total_ms__isnull=False)
    rows = (GenerationRequest.objects
            .filter(model__in=model_ids, created_at__gte=timezone.now() - timedelta(hours=window_hours))
            .exclude(state__in=[State.QUEUED, State.RUNNING, State.CANCELLED])
            .values("model")
            .annotate(total=Count("id"), failed=Count("id", filter=Q(state=State.FAILED)),
                      generation_ms=Sum(F("total_ms") - F("time_to_first_token_ms"), filter=succeeded),
                      tokens=Sum("completion_tokens", filter=succeeded)))
    return {row["model"]: (row["failed"] / row["total"],
                           row["generation_ms"] / row["tokens"] if row["tokens"] else None) for row in rows}
