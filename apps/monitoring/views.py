from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from apps.accounts.models import Scope
from apps.core.endpoints import Endpoint, operation
from apps.core.errors import AuthenticationError, error_response

from .access import may_see_details, metrics_token_valid
from .analytics import GROUPINGS, usage_analytics_for
from .health import health_public, health_report
from .system import system_metrics


class LivenessView(Endpoint):
    authentication_classes = []
    permission_classes = [AllowAny]

    @operation(summary="Liveness: the web process answers (no dependency is checked)",
               responses=inline_serializer("Live", {"status": serializers.CharField()}))
    def get(self, request):
        return Response({"status": "ok"})


class HealthView(Endpoint):
    """Readiness, at /health and /health/ready: 503 until every dependency holds (docs/observability.md)."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @operation(
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


class SystemMetricsView(Endpoint):
    required_scope = Scope.ADMIN

    @operation(summary="Host CPU and memory, per-GPU memory/utilisation/temperature, workers, queues (staff)",
                   responses=inline_serializer("SystemMetrics", {"host": serializers.DictField(),
                                                                 "gpus": serializers.ListField(),
                                                                 "workers": serializers.ListField(),
                                                                 "queues": serializers.DictField()}))
    def get(self, request):
        return Response(system_metrics())


class AnalyticsQuerySerializer(serializers.Serializer):
    group_by = serializers.ChoiceField(choices=list(GROUPINGS), required=False, default="model")
    since = serializers.DateTimeField(required=False, help_text="ISO 8601 (UTC when no offset), default: 24 hours "
                                                                 "before until")
    until = serializers.DateTimeField(required=False, help_text="ISO 8601 (UTC when no offset), default: now")
    user = serializers.CharField(required=False, max_length=150, trim_whitespace=False,
                                 help_text="a username (admin keys only)")


class SystemAnalyticsView(Endpoint):
    @operation(
        summary="Usage by user, model or time bucket: your own, or everyone's with an admin key",
        query=AnalyticsQuerySerializer,
        responses=inline_serializer("Analytics", {"object": serializers.CharField(),
                                                  "group_by": serializers.CharField(),
                                                  "since": serializers.DateTimeField(),
                                                  "until": serializers.DateTimeField(),
                                                  "scope": serializers.CharField(),
                                                  "data": serializers.ListField(child=serializers.DictField()),
                                                  "totals": serializers.DictField()}),
    )
    def get(self, request, query):
        return Response(usage_analytics_for(key=request.auth, group_by=query["group_by"], since=query.get("since"),
                                            until=query.get("until"), username=query.get("user")))
