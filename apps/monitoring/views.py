from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.models import Scope
from apps.core.errors import AppError, AuthenticationError, error_response

from .access import may_see_details, metrics_token_valid
from .analytics import GROUPINGS, usage_analytics
from .health import health_public, health_report
from .system import system_metrics


class LivenessView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(summary="Liveness: the web process answers (no dependency is checked)",
                   responses=inline_serializer("Live", {"status": serializers.CharField()}))
    def get(self, request):
        return Response({"status": "ok"})


class HealthView(APIView):
    """Readiness, at /health and /health/ready: 503 until every dependency holds (docs/observability.md)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Database, Redis, broker, a worker per GPU queue, disk space (cached a few seconds)",
        description="200 when every check holds (status `ok`, or `warning` when the disk runs low), 503 "
                    "otherwise. Each check's `detail` (hostnames, paths, errors) is shown only to an admin "
                    "key or the metrics token.",
        responses={200: inline_serializer("Health", {"status": serializers.CharField(),
                                                     "checks": serializers.DictField()}),
                   503: inline_serializer("HealthFailed", {"status": serializers.CharField(),
                                                           "checks": serializers.DictField()})},
    )
    def get(self, request):
        report = health_report()
        body = report if may_see_details(request) else health_public(report)
        return Response(body, status=503 if report["status"] == "unavailable" else 200)


def metrics_view(request):
    """Prometheus exposition (django-prometheus's view), behind AIHUB_METRICS_TOKEN when it is set."""
    if not metrics_token_valid(request):
        return error_response(AuthenticationError(
            "This endpoint needs `Authorization: Bearer <AIHUB_METRICS_TOKEN>`.", code="invalid_metrics_token"))
    return ExportToDjangoView(request)


class SystemMetricsView(APIView):
    required_scope = Scope.ADMIN

    @extend_schema(summary="Host CPU and memory, per-GPU memory/utilisation/temperature, workers, queues (staff)",
                   responses=inline_serializer("SystemMetrics", {"host": serializers.DictField(),
                                                                 "gpus": serializers.ListField(),
                                                                 "workers": serializers.ListField(),
                                                                 "queues": serializers.DictField()}))
    def get(self, request):
        return Response(system_metrics())


def _datetime_param(request, name: str, default: datetime) -> datetime:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise AppError(f"{name} must be an ISO 8601 date or time.", param=name, code="invalid_value")
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


class SystemAnalyticsView(APIView):
    @extend_schema(
        summary="Usage by user, model or time bucket: your own, or everyone's with an admin key",
        parameters=[OpenApiParameter("group_by", str, enum=list(GROUPINGS), description="default: model"),
                    OpenApiParameter("since", str, description="ISO 8601, default: 24 hours ago"),
                    OpenApiParameter("until", str, description="ISO 8601, default: now"),
                    OpenApiParameter("user", str, description="a username (admin keys only)")],
        responses=inline_serializer("Analytics", {"data": serializers.ListField(),
                                                  "totals": serializers.DictField()}),
    )
    def get(self, request):
        group_by = request.query_params.get("group_by", "model")
        if group_by not in GROUPINGS:
            raise AppError(f"group_by must be one of {', '.join(GROUPINGS)}.", param="group_by",
                           code="invalid_value")
        now = timezone.now()
        until = _datetime_param(request, "until", now)
        since = _datetime_param(request, "since", until - timedelta(hours=24))
        everyone = request.auth.has_scope(Scope.ADMIN)
        username = request.query_params.get("user")
        if username is not None and not everyone:
            raise AppError("Only admin keys may look at other users.", status=403, type="permission_error",
                           param="user", code="insufficient_scope")
        users = None if everyone else [request.user]
        if username is not None:
            users = get_user_model().objects.filter(username=username)
        result = usage_analytics(users=users, group_by=group_by, since=since, until=until)
        return Response({"object": "analytics", "group_by": group_by, "since": since, "until": until,
                         "scope": "all" if users is None else "filtered" if username else "own", **result})
