from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from apps.catalog.selectors import model_get
from apps.chat.cancellation import generation_requests_cancel
from apps.core.errors import AppError, NotFoundError
from apps.training.services import training_jobs_cancel

from .limits import effective_limits, tighter
from .models import DEFAULT_SCOPES, KEY_PREFIX, ApiKey, Profile, Scope, normalized_scopes

# Limits a client may ask for when a key mints a key; the rest are inherited as they are.
MINTABLE_LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent_generations", "token_budget")
# What a minted key holds, fixed when it is made: never looser than its parent's at that moment.
_MINTED_LIMITS = (*MINTABLE_LIMITS, "max_queued_training_jobs")


def api_key_create(*, user, name: str = "", scopes: list[str] | None = None, expires_at=None,
                   parent: ApiKey | None = None, limits: dict[str, int] | None = None) -> tuple[ApiKey, str]:
    """Create a key and return it with the raw value, which is shown once and never stored.

    Without `parent` the key is an operator's (createapikey, the admin): independent,
    with its own budget. Keys made by keys go through `api_key_mint`.
    """
    scopes = normalized_scopes(DEFAULT_SCOPES if scopes is None else scopes)
    unknown = set(scopes) - set(Scope.values)
    if unknown:
        raise AppError(f"Unknown scope(s): {', '.join(sorted(unknown))}.", param="scopes", code="invalid_value")
    if Scope.ADMIN in scopes and not user.is_staff:
        raise AppError("Only staff users can hold the admin scope.", status=403, type="permission_error",
                       param="scopes", code="forbidden")
    raw, lookup, key_hash = ApiKey.generate()
    key = ApiKey.objects.create(user=user, name=name, lookup=lookup, key_hash=key_hash, scopes=scopes,
                                expires_at=expires_at, parent=parent,
                                budget_root_id=parent.budget_id if parent else None, **(limits or {}))
    return key, raw


def _beyond_powers(message: str, *, param: str) -> AppError:
    return AppError(message, status=403, type="permission_error", param=param, code="beyond_key_powers")


def api_key_mint(*, parent: ApiKey, name: str = "", scopes: list[str] | None = None,
                 expires_in_days: int | None = None, limits: dict[str, int] | None = None) -> tuple[ApiKey, str]:
    """A key made by a key (POST /keys): within its parent's scopes, expiry and limits, on the family's budget.

    Left out, scopes, expiry and limits are the parent's; asked for, each must be
    no wider than the parent's, else 403. The new key shares the counters of its
    family's root (docs/limits.md), so minting keys never adds budget.
    `limits` may name only MINTABLE_LIMITS.
    """
    expires_at = timezone.now() + timedelta(days=expires_in_days) if expires_in_days is not None else None
    unknown = set(limits or {}) - set(MINTABLE_LIMITS)
    if unknown:
        raise AppError(f"These limits cannot be set on a key: {', '.join(sorted(unknown))}.",
                       param=sorted(unknown)[0], code="unsupported_parameter")
    scopes = list(parent.scopes if scopes is None else scopes)
    beyond = set(scopes) - set(parent.scopes)
    if beyond:
        raise AppError(f"This key cannot grant scope(s) it lacks: {', '.join(sorted(beyond))}.",
                       status=403, type="permission_error", param="scopes", code="insufficient_scope")
    if parent.expires_at is not None:
        if expires_at is None:
            expires_at = parent.expires_at
        elif expires_at > parent.expires_at:
            raise _beyond_powers(f"This key expires at {parent.expires_at.isoformat()}; a key it makes cannot "
                                 "outlive it.", param="expires_in_days")
    allowed = asdict(effective_limits(parent))
    wanted = limits or {}
    own = {}
    for field in _MINTED_LIMITS:
        value = wanted.get(field)
        if value is None:
            own[field] = allowed[field]
        elif tighter(value, allowed[field]) != value:
            raise _beyond_powers(f"{field} {value} is looser than this key's {allowed[field]} "
                                 "(0 means unlimited): a key can only make keys with tighter limits.", param=field)
        else:
            own[field] = value
    return api_key_create(user=parent.user, name=name, scopes=scopes, expires_at=expires_at, parent=parent,
                          limits=own)


def api_key_revoke(*, user, key_id: int) -> ApiKey:
    """Revoke one of the user's keys (404 for anyone else's)."""
    key = ApiKey.objects.filter(user=user, id=key_id).first()
    if key is None:
        raise NotFoundError(f"No API key with id {key_id}.", param="id")
    api_keys_revoke(keys=ApiKey.objects.filter(pk=key.pk))
    key.refresh_from_db(fields=["revoked_at"])
    return key


@transaction.atomic
def api_keys_revoke(*, keys: QuerySet) -> int:
    """Revoke the keys, and the keys minted from them, at once; stop their requests and training jobs.

    Returns how many were active.

    New requests are refused at authentication; open websockets stop at their
    next message (apps/accounts/websocket.py).
    """
    ids = _with_minted_descendants(list(keys.values_list("id", flat=True)))
    revoked = ApiKey.objects.filter(id__in=ids, revoked_at__isnull=True).update(revoked_at=timezone.now())
    generation_requests_cancel(api_key_ids=ids)
    training_jobs_cancel(api_key_ids=ids)
    return revoked


def _with_minted_descendants(ids: list[int]) -> list[int]:
    """The keys and every key minted from them, at any depth: whoever held a leaked key may have minted
    others to keep, so revoking it revokes what it made (one query per generation of keys)."""
    found, frontier = set(ids), list(ids)
    while frontier:
        frontier = [i for i in ApiKey.objects.filter(parent_id__in=frontier).values_list("id", flat=True)
                    if i not in found]
        found.update(frontier)
    return list(found)


@transaction.atomic
def user_deactivate(*, user) -> None:
    """Deactivate the user: every key of theirs stops working; their requests and training jobs stop."""
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    user.is_active = False
    generation_requests_cancel(user=user)
    training_jobs_cancel(user=user)


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
    key = ApiKey.objects.select_related("user", "user__aihub_profile", "budget_root").filter(
        lookup=parts[1]).first()
    if key is None or not key.matches(raw_key) or not key_is_usable(key):
        return None
    now = timezone.now()
    # Touch at most once a minute: a write per request would serialise hot keys.
    if key.last_used_at is None or (now - key.last_used_at).total_seconds() > 60:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
    return key


def key_is_usable(key: ApiKey) -> bool:
    """Not revoked, not expired, and its user not deactivated (as loaded: see api_key_still_usable)."""
    return key.is_active and key.user.is_active


def api_key_still_usable(*, key_id: int) -> bool:
    """Re-read whether a key still works: one indexed query, for long-lived connections. Sync."""
    key = ApiKey.objects.select_related("user").only("revoked_at", "expires_at", "user__is_active").filter(
        pk=key_id).first()
    return key is not None and key_is_usable(key)


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


def preferred_model_set(*, user, key: ApiKey, model_id: str | None) -> None:
    """Set (or clear, with None or "") the model `auto` prefers; 404 for a model this key may not use."""
    if model_id:
        model_get(user=user, key=key, model_id=model_id)
    Profile.objects.update_or_create(user=user, defaults={"preferred_model": model_id or ""})
