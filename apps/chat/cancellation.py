"""Stopping every live request of a key or a user, when the key is revoked or the user deactivated."""
from __future__ import annotations

from django.db import transaction

from apps.core.events import request_cancel_sync

from .models import GenerationRequest

LIVE_STATES = (GenerationRequest.State.QUEUED, GenerationRequest.State.RUNNING)


def generation_requests_cancel(*, api_key_ids: list[int] | None = None, user=None) -> int:
    """Ask the workers to stop the queued and running requests of these keys (or of this user).

    Cancelling is the cooperative flag of apps/core/events.py: a running request
    stops within a decoding step, a queued one ends `cancelled` when a worker
    takes it. Flags are set once the caller's transaction commits, so a
    rolled-back revocation stops nothing.
    """
    live = GenerationRequest.objects.filter(state__in=LIVE_STATES)
    live = live.filter(api_key_id__in=api_key_ids) if api_key_ids is not None else live.filter(user=user)
    request_ids = list(live.values_list("id", flat=True))

    def cancel():
        for request_id in request_ids:
            request_cancel_sync(request_id)

    transaction.on_commit(cancel)
    return len(request_ids)
