from __future__ import annotations

from django.contrib.auth import get_user_model
from django.utils import timezone

from .models import KEY_PREFIX, ApiKey, Profile


def api_key_create(*, user, name: str = "") -> tuple[ApiKey, str]:
    """Create a key and return it with the raw value, which is shown once and never stored."""
    raw, lookup, key_hash = ApiKey.generate()
    key = ApiKey.objects.create(user=user, name=name, lookup=lookup, key_hash=key_hash)
    return key, raw


def user_get_or_create(*, username: str):
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The active key matching `raw_key`, or None. Sync: wrap with sync_to_async in async code."""
    parts = raw_key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_PREFIX:
        return None
    key = ApiKey.objects.select_related("user").filter(lookup=parts[1]).first()
    if key is None or not key.matches(raw_key) or not key.is_active or not key.user.is_active:
        return None
    now = timezone.now()
    # Touch at most once a minute: a write per request would serialise hot keys.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


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
