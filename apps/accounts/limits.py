"""Per-key-family limits, enforced atomically in Redis across every web process (docs/limits.md).

One Lua script checks every limit and, only if all pass, takes the request's
share of each: a request slot in this minute, a reservation of tokens (prompt
estimate + max_tokens) against the minute and the budget period, and a
concurrency slot. Nothing is taken when anything is refused, so a refused
request costs nothing. The counters belong to the key family (`ApiKey.budget_id`):
a key minted by another key spends the same budget, never a fresh one. When
the request ends, the worker settles: it frees the concurrency slot and
refunds the tokens it reserved but did not use.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass

from django.conf import settings

from apps.core.errors import AppError
from apps.core.redis import sync_client

from .models import ApiKey, LimitFields, Profile


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent_generations: int
    token_budget: int
    budget_period_days: int
    max_queued_training_jobs: int


def _profile(key: ApiKey) -> Profile | None:
    try:
        return key.user.aihub_profile  # loaded with the key (api_key_authenticate)
    except Profile.DoesNotExist:
        return None


def _own_limits(key: ApiKey, profile: Profile | None) -> dict[str, int]:
    """The key's own value, else the user's, else the setting; 0 means unlimited."""
    values = {}
    for name in LimitFields.LIMIT_NAMES:
        for source in (key, profile):
            value = getattr(source, name, None) if source is not None else None
            if value is not None:
                values[name] = value
                break
        else:
            values[name] = settings.AIHUB_DEFAULT_LIMITS[name]
    return values


def tighter(a: int, b: int) -> int:
    """The stricter of two limits, where 0 means unlimited."""
    return max(a, b) if 0 in (a, b) else min(a, b)


def effective_limits(key: ApiKey) -> Limits:
    """The key's limits; a minted key is also held to its family's root, whose counters it shares.

    A minted key stores its limits when it is made (no looser than its parent's
    at that moment); taking the root's current limits as well means an operator
    who tightens the root (or the user's defaults) tightens the whole family.
    """
    profile = _profile(key)  # a family has one user: the root's profile is the key's
    values = _own_limits(key, profile)
    root = key.budget_root
    if root is not None:
        root_values = _own_limits(root, profile)
        values = {name: tighter(value, root_values[name]) for name, value in values.items()}
        # One counter per family and period: the period is the root's.
        values["budget_period_days"] = root_values["budget_period_days"]
    return Limits(**values)


# KEYS: rpm, tpm, budget, concurrency.  ARGV: limits..., cost, request id, now, ttls...
_ADMIT = """
local rpm_limit, tpm_limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local budget_limit, conc_limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local cost, request_id, now = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local minute_left, budget_left, stale_after = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
if rpm_limit > 0 and tonumber(redis.call('GET', KEYS[1]) or '0') + 1 > rpm_limit then
  return {'rate_limit_exceeded', 'requests per minute', minute_left}
end
if tpm_limit > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + cost > tpm_limit then
  return {'rate_limit_exceeded', 'tokens per minute', minute_left}
end
if budget_limit > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') + cost > budget_limit then
  return {'insufficient_quota', 'token budget', budget_left}
end
if conc_limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - stale_after)
  if redis.call('ZCARD', KEYS[4]) + 1 > conc_limit then
    return {'rate_limit_exceeded', 'concurrent generations', 1}
  end
end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], minute_left + 1)
redis.call('INCRBY', KEYS[2], cost); redis.call('EXPIRE', KEYS[2], minute_left + 1)
redis.call('INCRBY', KEYS[3], cost); redis.call('EXPIRE', KEYS[3], budget_left + 1)
redis.call('ZADD', KEYS[4], now, request_id); redis.call('EXPIRE', KEYS[4], stale_after)
return {'ok', '', 0}
"""


@functools.cache
def _admit_script():
    # EVALSHA: the script travels once per connection pool, not with every request.
    return sync_client().register_script(_ADMIT)


def _keys(key_id: int, now: float, period_days: int) -> tuple[list[str], int, int]:
    minute = int(now // 60)
    period_seconds = max(1, period_days) * 86400
    period = int(now // period_seconds)
    keys = [f"aihub:limit:{key_id}:rpm:{minute}", f"aihub:limit:{key_id}:tpm:{minute}",
            f"aihub:limit:{key_id}:budget:{period_days}:{period}", f"aihub:limit:{key_id}:concurrent"]
    minute_left = 60 - int(now % 60)
    budget_left = period_seconds - int(now % period_seconds)
    return keys, minute_left, budget_left


def limits_admit(*, key: ApiKey, request_id: str, cost: int) -> dict:
    """Take the request's share or raise a 429; returns the reservation to settle later."""
    limits = effective_limits(key)
    now = time.time()
    keys, minute_left, budget_left = _keys(key.budget_id, now, limits.budget_period_days)
    result = _admit_script()(keys, [limits.requests_per_minute, limits.tokens_per_minute,
                         limits.token_budget, limits.max_concurrent_generations, cost, request_id, now,
                                     minute_left, budget_left, int(settings.AIHUB_REQUEST_TIMEOUT_SECONDS)])
    verdict, what, retry_after = result
    if verdict != "ok":
        kind = "insufficient_quota" if verdict == "insufficient_quota" else "rate_limit_exceeded"
        raise AppError(f"Limit reached for this API key: {what}. Retry after {retry_after} s.",
                       status=429, type="rate_limit_error" if kind == "rate_limit_exceeded" else "insufficient_quota",
                       code=kind, retry_after=int(retry_after))
    return {"keys": keys, "reserved": cost, "request_id": request_id, "limits": asdict(limits)}


def limits_settle(reservation: dict | None, *, used_tokens: int) -> None:
    """Free the concurrency slot and replace the reservation by the tokens really used (once per request).

    The prompt was estimated at admission; the real count may be higher, so
    the difference is charged (or refunded) here and the counters end exact.
    """
    if not reservation:
        return
    client = sync_client()
    _, tpm_key, budget_key, concurrency_key = reservation["keys"]
    if not client.zrem(concurrency_key, reservation["request_id"]):
        return  # already settled (a redelivered message, or the web side after a rollback)
    delta = used_tokens - reservation["reserved"]
    if delta:
        pipe = client.pipeline(transaction=False)
        for key in (tpm_key, budget_key):
            pipe.incrby(key, delta)
        pipe.execute()


# What an image (or a video frame) is guessed to cost before the worker's processor counts it: SmolVLM's tiles
# are 64 tokens, a Qwen2-VL picture up to a few hundred (docs/multimodal.md).
ESTIMATED_TOKENS_PER_IMAGE = 256


def estimate_prompt_tokens(messages: list[dict]) -> int:
    # About four characters per token; the reservation is settled against real counts afterwards.
    images = sum(1 if part["type"] == "image" else len(part.get("image_ids") or [])
                 for m in messages for part in m.get("parts") or [] if part["type"] != "text")
    # A video's transcript is prompt text the message's content does not hold.
    transcripts = sum(len(part.get("transcript") or "") for m in messages for part in m.get("parts") or [])
    return (math.ceil((sum(len(m["content"]) for m in messages) + transcripts) / 4) + 4 * len(messages)
            + ESTIMATED_TOKENS_PER_IMAGE * images)
