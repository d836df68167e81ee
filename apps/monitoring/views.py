from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from .health import check_broker_and_workers, check_database, check_redis


def _entry(result: tuple[bool, str]) -> dict:
    ok, detail = result
    return {"ok": ok, "detail": detail}


class HealthView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Database, Redis, broker and a worker per GPU queue",
        description="200 when every check holds, 503 otherwise; `checks` says what failed.",
        responses={200: inline_serializer("Health", {"status": serializers.CharField(),
                                                     "checks": serializers.DictField()}),
                   503: inline_serializer("HealthFailed", {"status": serializers.CharField(),
                                                           "checks": serializers.DictField()})},
    )
    def get(self, request):
        broker, workers = check_broker_and_workers()
        checks = {"database": _entry(check_database()), "redis": _entry(check_redis()), "broker": _entry(broker)}
        checks.update({f"worker:{queue}": _entry(result) for queue, result in workers.items()})
        healthy = all(check["ok"] for check in checks.values())
        return Response({"status": "ok" if healthy else "unavailable", "checks": checks},
                        status=200 if healthy else 503)
