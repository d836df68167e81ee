from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.core.errors import AppError, NotFoundError

from .models import DEFAULT_SCOPES, KEY_PREFIX, ApiKey, Profile, Scope


def api_key_create(*, user, name: str = "", scopes: list[str] | None = None, expires_at=None) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw value, which is shown once and never stored."""
    scopes = list(DEFAULT_SCOPES if scopes is None else scopes)
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise AppError(f"Unknown scope(s): {', '.join(sorted(unknown))}.", param="scopes", code="invalid_value")
    if Scope.ADMIN in scopes and not user.is_staff:
        raise AppError("Only staff users can hold the admin scope.", status=403, type="permission_error",
                       param="scopes", code="forbidden")
    raw, lookup, key_hash = ApiKey.generate()
    key = ApiKey.objects.create(user=user, name=name, lookup=lookup, key_hash=key_hash, scopes=scopes,
                                expires_at=expires_at)
    return key, raw


def api_key_revoke(*, user, key_id: int) -> ApiKey:
    key = ApiKey.objects.filter(user=user, id=key_id).first()
    if key is None:
        raise NotFoundError(f"No API key with id {key_id}.", param="id")
    key.revoke()
    return key


def require_scope(key: ApiKey, scope: str) -> None:
    if not key.has_scope(scope):
        raise AppError(f"This API key lacks the '{scope}' scope.", status=403, type="permission_error",
                       code="insufficient_scope")


def user_get_or_create(*, username: str):
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None. Sync: wrap with sync_to_async in async code."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    # The profile comes along: limits need it on every request.
    key = ApiKey.objects.select_related("user", "user__aihub_profile").filter(lookup=parts[1]).first()
    if key is None or not key.matches(raw_key) or not key.is_active or not key.user.is_active:
        return None
    now = timezone.now()
    # Touch at most once a minute: a write per request would serialise hot keys.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def bearer_token_from_scope(scope: dict) -> str | None:
    """The Bearer key of a websocket handshake (non-browser clients send it as a header)."""
    headers = dict(scope.get("headers", []))
    return bearer_token(headers.get(b"authorization", b"").decode("latin1"))


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def preferred_model_get(*, user) -> str | None:
    return Profile.objects.filter(user=user).values_list("preferred_model", flat=True).first() or None


def preferred_model_set(*, user, model_id: str | None) -> None:
    Profile.objects.update_or_create(user=user, defaults={"preferred_model": model_id or ""})
