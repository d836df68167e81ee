"""Who may read /metrics and the details of /health (docs/observability.md)."""
from __future__ import annotations

import hmac

from django.conf import settings

from apps.accounts.models import Scope
from apps.accounts.services import api_key_authenticate, bearer_token


def _bearer(request) -> str | None:
    return bearer_token(request.headers.get("Authorization"))


def _is_metrics_token(raw: str | None) -> bool:
    """The request bears AIHUB_METRICS_TOKEN (never true while none is set); a constant-time comparison."""
    expected = settings.AIHUB_METRICS_TOKEN
    return bool(expected) and raw is not None and hmac.compare_digest(raw.encode(), expected.encode())


def metrics_token_valid(request) -> bool:
    """True when no AIHUB_METRICS_TOKEN is set (open, for local scraping) or the request bears it."""
    return not settings.AIHUB_METRICS_TOKEN or _is_metrics_token(_bearer(request))


def may_see_details(request) -> bool:
    """The metrics token (when set) or an admin key: hostnames, paths and error texts are for operators."""
    raw = _bearer(request)
    if raw is None:
        return False
    if _is_metrics_token(raw):
        return True
    key = api_key_authenticate(raw_key=raw)
    return key is not None and key.has_scope(Scope.ADMIN)
