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

The same script also adds the request to a per-minute hash (`aihub:metrics:minute:<epoch minute>`, kept two
hours): requests by model and state, and time to first token in fine buckets. The operations dashboard reads
the last hour from these 60 small hashes (apps/monitoring/dashboard.py), so its figures cost the same at
100 requests an hour or 100,000.
"""
from __future__ import annotations

import functools
import time
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

# Time to first token buckets of the per-minute rollup (upper bounds, ms): 25 % apart from 10 ms to ~2 min,
# so a percentile read from them (linear inside its bucket) is within about 12 % of the exact one.
MINUTE_TTFT_BOUNDS_MS = tuple(round(10 * 1.25 ** i, 1) for i in range(43))
MINUTE_PREFIX = "aihub:metrics:minute:"
MINUTE_TTL_SECONDS = 2 * 3600  # the dashboard reads the last hour

# KEYS: the guard, then hashes.  ARGV: the guard's ttl, then per hash: its ttl (0: none), the number n of
# (field, increment) pairs that follow, and the n pairs. Increments may be fractional.
_RECORD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
local i = 2
for k = 2, #KEYS do
  local ttl, n = tonumber(ARGV[i]), tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    redis.call('HINCRBYFLOAT', KEYS[k], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  if ttl > 0 then
    redis.call('EXPIRE', KEYS[k], ttl)
  end
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


def _record(guard: str, counters: dict[str, float], minute: dict[str, float]) -> bool:
    """Add `counters` to the totals and `minute` to this minute's hash, once per guard."""
    now = int(time.time())
    keys = [GUARD_PREFIX + guard, COUNTERS_KEY, minute_key(now - now % 60)]
    args: list = [GUARD_TTL_SECONDS]
    for ttl, increments in ((0, counters), (MINUTE_TTL_SECONDS, minute)):
        args += [ttl, len(increments)]
        for key, value in increments.items():
            args += [key, value]
    return bool(_record_script()(keys=keys, args=args))


def minute_key(minute_start: int) -> str:
    return f"{MINUTE_PREFIX}{minute_start}"


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
    minute = {field("requests", model, generation.state): 1}
    if generation.time_to_first_token_ms is not None and not generation.cache_hit:  # a hit took no GPU time
        bucket = bisect_left(MINUTE_TTFT_BOUNDS_MS, generation.time_to_first_token_ms)
        minute[field("ttft", model, str(bucket))] = 1
    return _record(str(generation.id), increments, minute)


def usage_record(*, request_id: str, model_id: str, state: str, prompt_tokens: int) -> bool:
    """Count a request that has no row (an embedding job) once: its requests and prompt tokens series."""
    model = model_label(model_id)
    return _record(request_id, {field("requests", model, state): 1, field("tokens", model, "prompt"): prompt_tokens},
                   {field("requests", model, state): 1})


# KEYS: minute hashes. Returns, per key, its fields other than time to first token (the chart's points), and
# the time to first token fields summed over every key: the hour's TTFT buckets are merged in Redis, so the
# reply is a few hundred fields, not the whole hour's (60 x models x ~45 buckets, slow to parse in Python).
_MINUTES_READ = """
local minutes, ttft = {}, {}
for i, key in ipairs(KEYS) do
  local flat, kept = redis.call('HGETALL', key), {}
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, 4) == 'ttft' and string.byte(flat[j], 5) == 31 then  -- 31: SEP
      ttft[flat[j]] = (ttft[flat[j]] or 0) + tonumber(flat[j + 1])
    else
      kept[#kept + 1] = flat[j]
      kept[#kept + 1] = flat[j + 1]
    end
  end
  minutes[i] = kept
end
local merged = {}
for name, value in pairs(ttft) do
  merged[#merged + 1] = name
  merged[#merged + 1] = tostring(value)
end
return {minutes, merged}
"""


@functools.cache
def _minutes_read_script():
    return sync_client().register_script(_MINUTES_READ)


def _parts(flat: list) -> dict[tuple[str, ...], float]:
    return {tuple(flat[i].split(SEP)): float(flat[i + 1]) for i in range(0, len(flat), 2)}


def minutes_read(minute_starts: list[int]) -> tuple[list[dict[tuple[str, ...], float]], dict[tuple[str, ...], float]]:
    """For these minutes (epoch seconds, multiples of 60): each one's request counts ("requests", model, state),
    and the time to first token buckets ("ttft", model, bucket) summed over all of them. One round trip."""
    minutes, ttft = _minutes_read_script()(keys=[minute_key(start) for start in minute_starts])
    return [_parts(minute) for minute in minutes], _parts(ttft)


def request_metrics_read() -> dict[tuple[str, ...], float]:
    """Every counter, keyed by its field's parts: ("requests", model, state) -> n, ("errors", model, code) -> n..."""
    return {tuple(key.split(SEP)): float(value) for key, value in sync_client().hgetall(COUNTERS_KEY).items()}
