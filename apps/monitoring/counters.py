"""Request, token and latency counters for /metrics, maintained in Redis as requests end.

Why counters and not a query: /metrics used to GROUP BY the whole requests
table at every scrape, so a scrape cost grew with the table (seconds at a few
hundred thousand rows) and anyone could make the database do it. Now the one
place a request is settled (`generation_settle` in apps/chat/services.py, the response cache's
answer) adds it to one Redis hash, and a scrape is one HGETALL whatever the
table holds. Redis is shared, so every web process reports the same totals.

Exactly once: a request may be settled twice (a redelivered message, a worker
failing the rows it left running, the sweeper). A per-request guard taken with
SET NX in the same Lua script as the increments makes the second settlement a
no-op; the guard lives longer than the broker's visibility timeout, the longest
a redelivery can come late.

Labels carry no user data: a fine-tuned model `ft:<base>:<suffix>:<hex>` is
counted as `ft:<base>` (the suffix and the job's hex are the user's).
"""
from __future__ import annotations

import functools
from bisect import bisect_left

import celeryconfig
from apps.core.redis import sync_client

COUNTERS_KEY = "aihub:metrics:counters"
GUARD_PREFIX = "aihub:metrics:counted:"
# A redelivered message arrives at the latest one visibility timeout after the first delivery.
GUARD_TTL_SECONDS = int(celeryconfig.broker_transport_options["visibility_timeout"]) + 3600
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Histogram name -> the request field it observes (milliseconds).
HISTOGRAMS = {"ttft": "time_to_first_token_ms", "duration": "total_ms"}
SEP = "\x1f"  # between the parts of a hash field: never in a model id

# KEYS: guard, counters.  ARGV: guard ttl, then (field, increment) pairs; increments may be fractional.
_RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
end
return 1
"""


@functools.cache
def _record_script():
    return sync_client().register_script(_RECORD)


def model_label(model_id: str) -> str:
    """The catalog id, or `ft:<base>` for a fine-tuned model (its suffix and job hex name a user's work)."""
    if not model_id.startswith("ft:"):
        return model_id
    parts = model_id.split(":")
    return ":".join(parts[:-2]) if len(parts) >= 4 else "ft"


def field(*parts: str) -> str:
    return SEP.join(parts)


def request_metrics_record(*, generation) -> bool:
    """Count a finished request once (later calls for it do nothing); True if this call counted it."""
    if not generation.is_finished:
        return False
    model = model_label(generation.model)
    increments = {
        field("requests", model, generation.state): 1,
        field("tokens", model, "prompt"): generation.prompt_tokens,
        field("tokens", model, "completion"): generation.completion_tokens,
    }
    if generation.cache_hit:
        increments[field("cache_hits", model)] = 1
    if generation.state == generation.State.FAILED:
        # By the error's code (insufficient_memory, timeout, ...): what an alert or an operator asks "why" with.
        increments[field("errors", model, (generation.error or {}).get("code") or "unknown")] = 1
    for name, attribute in HISTOGRAMS.items():
        value_ms = getattr(generation, attribute)
        if value_ms is None:
            continue  # a failed request has no first token and no total
        seconds = value_ms / 1000
        bucket = bisect_left(LATENCY_BUCKETS, seconds)  # the first bound >= seconds; len() is +Inf
        increments[field(name, model, str(bucket))] = 1
        increments[field(name + "_sum", model)] = seconds
    args = [GUARD_TTL_SECONDS]
    for key, value in increments.items():
        args += [key, value]
    return bool(_record_script()(keys=[GUARD_PREFIX + str(generation.id), COUNTERS_KEY], args=args))


def usage_record(*, request_id: str, model_id: str, state: str, prompt_tokens: int) -> bool:
    """Count a request that has no row (an embedding job) once: its requests and prompt tokens series."""
    model = model_label(model_id)
    args = [GUARD_TTL_SECONDS, field("requests", model, state), 1, field("tokens", model, "prompt"), prompt_tokens]
    return bool(_record_script()(keys=[GUARD_PREFIX + request_id, COUNTERS_KEY], args=args))


def request_metrics_read() -> dict[tuple[str, ...], float]:
    """Every counter, keyed by its field's parts: ("requests", model, state) -> n, ("errors", model, code) -> n..."""
    return {tuple(key.split(SEP)): float(value) for key, value in sync_client().hgetall(COUNTERS_KEY).items()}
