"""Usage analytics over the request records (GenerationRequest rows)."""
from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.db.models import Aggregate, Avg, Count, DurationField, F, FloatField, Q, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from apps.accounts.models import Scope
from apps.chat.models import GenerationRequest
from apps.core.errors import AppError

State = GenerationRequest.State
EARLIEST = datetime.min.replace(tzinfo=dt_timezone.utc)
GROUPINGS = {
    "model": F("model"),
    "user": F("user__username"),
    "hour": TruncHour("created_at"),
    "day": TruncDay("created_at"),
}


def usage_analytics(*, users=None, group_by: str, since: datetime, until: datetime) -> dict:
    """Aggregates by `group_by`; `users` None means everyone (staff)."""
    rows = GenerationRequest.objects.filter(created_at__gte=since, created_at__lt=until)
    if users is not None:
        rows = rows.filter(user__in=users)
    measures = {
        "requests": Count("id"),
        "succeeded": Count("id", filter=Q(state=State.SUCCEEDED)),
        "failed": Count("id", filter=Q(state=State.FAILED)),
        "cancelled": Count("id", filter=Q(state=State.CANCELLED)),
        "cache_hits": Count("id", filter=Q(cache_hit=True)),
        "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
        "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
        "avg_queue_wait_ms": Avg("queue_wait_ms"),
        "avg_time_to_first_token_ms": Avg("time_to_first_token_ms"),
        "avg_total_ms": Avg("total_ms"),
    }
    grouped = rows.annotate(key=GROUPINGS[group_by]).values("key").annotate(**measures).order_by("key")
    return {
        "data": [_shape(row) for row in grouped],
        "totals": _shape(rows.aggregate(**measures)),
    }


def _shape(row: dict) -> dict:
    row = dict(row)
    if isinstance(row.get("key"), datetime):
        row["key"] = row["key"].isoformat()
    row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    finished = row["succeeded"] + row["failed"]
    row["error_rate"] = round(row["failed"] / finished, 4) if finished else 0.0
    for name in ("avg_queue_wait_ms", "avg_time_to_first_token_ms", "avg_total_ms"):
        row[name] = round(row[name], 2) if row[name] is not None else None
    return row


def usage_analytics_for(*, key, group_by: str, since: datetime | None, until: datetime | None,
                        username: str | None) -> dict:
    """What a key may see of the analytics: its user's own, or with an admin key everyone's or one user's.

    The answer names the window and which of the three it is (`scope`: own, all, filtered).
    """
    everyone = key.has_scope(Scope.ADMIN)
    if username is not None and not everyone:
        raise AppError("Only admin keys may look at other users.", status=403, type="permission_error",
                       param="user", code="insufficient_scope")
    until = until or timezone.now()
    # max(): 24 hours before the first representable moment would overflow.
    since = since or max(until, EARLIEST + timedelta(hours=24)) - timedelta(hours=24)
    users = None if everyone else [key.user]
    if username is not None:
        users = get_user_model().objects.filter(username=username)
    result = usage_analytics(users=users, group_by=group_by, since=since, until=until)
    return {"object": "analytics", "group_by": group_by, "since": since, "until": until,
            "scope": "all" if users is None else "filtered" if username else "own", **result}


class Percentile(Aggregate):
    """PostgreSQL's percentile_cont: the `fraction` quantile of an expression, interpolated."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression, *, fraction: float, **extra):
        super().__init__(expression, fraction=float(fraction), **extra)


def model_figures(*, model_id: str, hours: int = 24) -> dict:
    """A model's last `hours` from its stored requests: latency percentiles, tokens/s, errors, requests per hour.

    Two queries on the (model, created_at) index: one aggregate, one grouped by hour.
    """
    until = timezone.now()
    since = until - timedelta(hours=hours)
    rows = GenerationRequest.objects.filter(model=model_id, created_at__gte=since)
    generating = Q(state=State.SUCCEEDED, first_token_at__isnull=False, finished_at__isnull=False)
    totals = rows.aggregate(
        requests=Count("id"),
        failed=Count("id", filter=Q(state=State.FAILED)),
        succeeded=Count("id", filter=Q(state=State.SUCCEEDED)),
        ttft_p50=Percentile("time_to_first_token_ms", fraction=0.5),
        ttft_p95=Percentile("time_to_first_token_ms", fraction=0.95),
        total_p50=Percentile("total_ms", fraction=0.5),
        total_p95=Percentile("total_ms", fraction=0.95),
        # Decoding speed: tokens after the first over the time spent producing them, across requests.
        decoded_tokens=Coalesce(Sum(F("completion_tokens") - 1, filter=generating & Q(completion_tokens__gt=1)), 0),
        decoding_time=Sum(F("finished_at") - F("first_token_at"), filter=generating & Q(completion_tokens__gt=1),
                          output_field=DurationField()),
    )
    seconds = totals.pop("decoding_time").total_seconds() if totals["decoding_time"] else 0.0
    totals["tokens_per_second"] = round(totals.pop("decoded_tokens") / seconds, 1) if seconds > 0 else None
    finished = totals["succeeded"] + totals["failed"]
    totals["error_rate"] = round(totals["failed"] / finished, 4) if finished else 0.0
    for name in ("ttft_p50", "ttft_p95", "total_p50", "total_p95"):
        totals[name] = round(totals[name], 1) if totals[name] is not None else None
    per_hour = {row["hour"]: row for row in rows.annotate(hour=TruncHour("created_at")).values("hour").annotate(
        requests=Count("id"), failed=Count("id", filter=Q(state=State.FAILED)))}
    first = since.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    hours_shown = [first + timedelta(hours=h) for h in range(hours)]
    series = [{"hour": hour.isoformat(), "requests": per_hour.get(hour, {}).get("requests", 0),
               "failed": per_hour.get(hour, {}).get("failed", 0)} for hour in hours_shown]
    return {"model": model_id, "hours": hours, "since": since.isoformat(), **totals, "per_hour": series}
