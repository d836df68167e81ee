"""Who may read /metrics and the details of /health (docs/observability.md)."""
from __future__ import annotations

import hmac

from django.conf import settings

from apps.accounts.models import Scope
from apps.accounts.services import api_key_authenticate, bearer_token


def _bearer(request) -> str | None:
    header = request.headers.get("Authorization")
    return bearer_token(header) if header else None


def metrics_token_valid(request) -> bool:
    """True when no AIHUB_METRICS_TOKEN is set (open, for local scraping) or the request bears it."""
    expected = settings.AIHUB_METRICS_TOKEN
    if not expected:
        return True
    raw = _bearer(request)
    return raw is not None and hmac.compare_digest(raw.encode(), expected.encode())


def may_see_details(request) -> bool:
    """The metrics token (when set) or an admin key: hostnames, paths and error texts are for operators."""
    raw = _bearer(request)
    if raw is None:
        return False
    if settings.AIHUB_METRICS_TOKEN and hmac.compare_digest(raw.encode(), settings.AIHUB_METRICS_TOKEN.encode()):
        return True
    key = api_key_authenticate(raw_key=raw)
    return key is not None and key.has_scope(Scope.ADMIN)
